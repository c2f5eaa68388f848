/* SPDX-License-Identifier: MIT */
/* Migration between system memory and the dummy device. */
#include "common.h"

#define N 256 /* 1 MiB with 4 KiB pages */

/* sys -> dev moves every page, data intact; dev -> sys brings all back. */
static void migrate(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	struct uhmm_stats s0 = UHMM_STATS_INIT, s1 = UHMM_STATS_INIT, s2 = UHMM_STATS_INIT;

	fill_pages(p, 0, N, 1);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	s0 = t_stats(h);

	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	s1 = t_stats(h);
	assert_true(s1.pages_to_device >= s0.pages_to_device + N);

	/* Already there: migrated again, nothing moves. */
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);

	assert_migrate(h, p, N * PS(), NULL, N, 0);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	s1 = t_stats(h);
	assert_true(s1.pages_to_system >= s0.pages_to_system + N);

	/* Explicitly migrated back: reading costs no CPU fault. */
	assert_pages(p, 0, N, 1);
	s2 = t_stats(h);
	assert_int_equal(s2.cpu_faults, s1.cpu_faults);

	/* res may be NULL. */
	assert_int_equal(uhmm_migrate(h, p, N * PS(), d, NULL), 0);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	assert_pages(p, 0, N, 1);
	t_close(h);
}

/* Never-populated pages are skipped going to a device, count as migrated going back. */
static void migrate_none(void **state)
{
	/* Fault-around off: populating one page must not zero-fill its neighbours. */
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	assert_migrate(h, p, N * PS(), d, 0, N);
	assert_states(h, p, 0, N, UHMM_STATE_NONE, NULL);

	/* Populate the odd pages. */
	for (size_t i = 1; i < N; i += 2)
		fill_pages(p, i, 1, 2);
	assert_migrate(h, p, N * PS(), d, N / 2, N / 2);
	for (size_t i = 0; i < N; i++) {
		struct uhmm_page_info inf;
		assert_int_equal(uhmm_query(h, page_at(p, i), 1, &inf), 0);
		if (i % 2) {
			assert_int_equal(inf.state, UHMM_STATE_DEVICE);
			assert_ptr_equal(inf.device, d);
		} else {
			assert_int_equal(inf.state, UHMM_STATE_NONE);
			assert_null(inf.device);
		}
	}
	/* Again: the device pages count as migrated, NONE pages are skipped. */
	assert_migrate(h, p, N * PS(), d, N / 2, N / 2);
	/* Back: everything counts as migrated. */
	assert_migrate(h, p, N * PS(), NULL, N, 0);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_DEVICE), 0);
	for (size_t i = 0; i < N; i++) {
		if (i % 2)
			assert_pages(p, i, 1, 2);
		else
			assert_zero_pages(p, i, 1);
	}
	t_close(h);
}

/*
 * Migrate, read half on the CPU (fault-around off: exactly those pages come
 * back, one CPU fault each), re-migrate the mixed range: all on the device.
 */
static void migrate_fault(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	struct uhmm_stats s0 = UHMM_STATS_INIT, s1 = UHMM_STATS_INIT;

	fill_pages(p, 0, N, 3);
	assert_migrate(h, p, N * PS(), d, N, 0);

	s0 = t_stats(h);
	assert_pages(p, 0, N / 2, 3);
	s1 = t_stats(h);
	assert_int_equal(s1.cpu_faults - s0.cpu_faults, N / 2);
	assert_int_equal(s1.pages_to_system - s0.pages_to_system, N / 2);
	assert_states(h, p, 0, N / 2, UHMM_STATE_SYSTEM, NULL);
	assert_states(h, p, N / 2, N / 2, UHMM_STATE_DEVICE, d);

	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);

	assert_pages(p, 0, N, 3);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	t_close(h);
}

/*
 * Default fault-around: one CPU touch brings back 16 contiguous pages
 * (including the touched one) in one CPU fault.
 */
static void migrate_fault_around(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	struct uhmm_page_info inf[N];
	struct uhmm_stats s0 = UHMM_STATS_INIT, s1 = UHMM_STATS_INIT;
	const size_t touch = 40;

	fill_pages(p, 0, N, 4);
	assert_migrate(h, p, N * PS(), d, N, 0);
	s0 = t_stats(h);
	assert_int_equal(touch_read(p, touch), pat(4, touch, 0));
	s1 = t_stats(h);
	assert_int_equal(s1.cpu_faults - s0.cpu_faults, 1);
	assert_int_equal(s1.pages_to_system - s0.pages_to_system, 16);

	assert_int_equal(uhmm_query(h, p, N, inf), 0);
	size_t first = N, last = 0, nsys = 0;
	for (size_t i = 0; i < N; i++)
		if (inf[i].state == UHMM_STATE_SYSTEM) {
			nsys++;
			if (i < first)
				first = i;
			last = i;
		} else {
			assert_int_equal(inf[i].state, UHMM_STATE_DEVICE);
		}
	assert_int_equal(nsys, 16);
	assert_int_equal(last - first + 1, 16);
	assert_true(first <= touch && touch <= last);
	assert_pages(p, first, 16, 4);
	/* Those 16 cost no further fault. */
	assert_int_equal(t_stats(h).cpu_faults, s1.cpu_faults);

	/* fault_around = 4: four pages per fault. */
	t_close(h);
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.fault_around = 4;
	h = t_open_opts(state, &o);
	d = t_dummy(h);
	p = t_alloc(h, N);
	fill_pages(p, 0, N, 5);
	assert_migrate(h, p, N * PS(), d, N, 0);
	s0 = t_stats(h);
	assert_int_equal(touch_read(p, touch), pat(5, touch, 0));
	s1 = t_stats(h);
	assert_int_equal(s1.cpu_faults - s0.cpu_faults, 1);
	assert_int_equal(s1.pages_to_system - s0.pages_to_system, 4);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_SYSTEM), 4);
	assert_pages(p, 0, N, 5);
	t_close(h);
}

/* A CPU write to a device-resident page brings the data back first. */
static void migrate_cpu_write(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h);
	uint64_t *p = t_alloc(h, N);
	size_t wpp = words_per_page();

	fill_pages(p, 0, N, 6);
	assert_migrate(h, p, N * PS(), d, N, 0);
	/* Write the middle word of each page without reading first. */
	for (size_t i = 0; i < N; i++)
		p[i * wpp + wpp / 2] = 0xdeadbeef00000000ULL + i;
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	for (size_t i = 0; i < N; i++)
		for (size_t j = 0; j < wpp; j++) {
			uint64_t exp = j == wpp / 2 ? 0xdeadbeef00000000ULL + i : pat(6, i, j);
			if (p[i * wpp + j] != exp) {
				print_error("page %zu word %zu\n", i, j);
				fail();
			}
		}
	t_close(h);
}

/* Migrating a sub-range moves only those pages. */
static void migrate_partial(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 7);
	assert_migrate(h, page_at(p, 64), 64 * PS(), d, 64, 0);
	assert_states(h, p, 0, 64, UHMM_STATE_SYSTEM, NULL);
	assert_states(h, p, 64, 64, UHMM_STATE_DEVICE, d);
	assert_states(h, p, 128, N - 128, UHMM_STATE_SYSTEM, NULL);
	/* A single page. */
	assert_migrate(h, page_at(p, 200), PS(), d, 1, 0);
	assert_states(h, p, 200, 1, UHMM_STATE_DEVICE, d);
	assert_states(h, p, 199, 1, UHMM_STATE_SYSTEM, NULL);
	assert_states(h, p, 201, 1, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, N, 7);
	t_close(h);
}

/* Migrate, then evict all device memory: CPU data correct without faults. */
static void migrate_release(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 8);
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_int_equal(uhmm_dummy_release(d), 0);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	uint64_t f = t_stats(h).cpu_faults;
	assert_pages(p, 0, N, 8);
	assert_int_equal(t_stats(h).cpu_faults, f);
	/* Release with nothing on the device. */
	assert_int_equal(uhmm_dummy_release(d), 0);
	t_close(h);
}

/* Ten rounds of migrate + CPU fault back. */
static void migrate_multiple(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	for (unsigned r = 0; r < 10; r++) {
		fill_pages(p, 0, N, 20 + r);
		assert_migrate(h, p, N * PS(), d, N, 0);
		assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
		uint64_t f = t_stats(h).cpu_faults;
		assert_pages(p, 0, N, 20 + r);
		assert_true(t_stats(h).cpu_faults > f);
		assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	}
	t_close(h);
}

/* Pages on another device are skipped (no stealing); both come back. */
static void migrate_two_devices(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *a = t_dummy(h), *b = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 9);
	assert_migrate(h, p, N / 2 * PS(), a, N / 2, 0);
	assert_migrate(h, p, N * PS(), b, N / 2, N / 2);
	assert_states(h, p, 0, N / 2, UHMM_STATE_DEVICE, a);
	assert_states(h, p, N / 2, N / 2, UHMM_STATE_DEVICE, b);

	/* Device reads of the other device's pages give the right data. */
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_read(a, page_at(p, N / 2), buf, 8, NULL), 0);
	assert_buf(buf, N / 2, 8, 9);
	free(buf);

	assert_migrate(h, p, N * PS(), NULL, N, 0);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, N, 9);
	t_close(h);
}

/* Fault injection: allocation failure skips every page, data intact. */
static void migrate_fail_alloc(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 10);
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_FAIL_ALLOC), 0);
	uint64_t sk = t_stats(h).pages_skipped;
	assert_migrate(h, p, N * PS(), d, 0, N);
	assert_true(t_stats(h).pages_skipped >= sk + N);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, N, 10);

	assert_int_equal(uhmm_dummy_set_fail(d, 0), 0);
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_pages(p, 0, N, 10);
	t_close(h);
}

/* Copy failure either way skips pages; no page half-migrated; data intact. */
static void migrate_fail_copy(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	struct uhmm_migrate_result r;

	fill_pages(p, 0, N, 11);
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_FAIL_COPY), 0);
	assert_migrate(h, p, N * PS(), d, 0, N);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, N, 11);

	assert_int_equal(uhmm_dummy_set_fail(d, 0), 0);
	assert_migrate(h, p, N * PS(), d, N, 0);

	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_FAIL_COPY), 0);
	assert_int_equal(uhmm_migrate(h, p, N * PS(), NULL, &r), 0);
	assert_int_equal(r.migrated + r.skipped, N);
	assert_int_equal(r.skipped, N);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	assert_int_equal(uhmm_dummy_release(d), -EBUSY);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);

	assert_int_equal(uhmm_dummy_set_fail(d, 0), 0);
	assert_migrate(h, p, N * PS(), NULL, N, 0);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, N, 11);
	t_close(h);
}

/* Not entirely managed, or another context's device: -EINVAL, nothing moves. */
static void migrate_unmanaged(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm *h2 = t_open(state);
	struct uhmm_device *d = t_dummy(h), *d2 = t_dummy(h2);
	void *p = t_alloc(h, N);
	void *q = t_mmap(4);
	struct uhmm_migrate_result r = { 7, 7 };

	fill_pages(p, 0, N, 12);
	/* One page past the end (the range is N pages). */
	assert_int_equal(uhmm_migrate(h, p, (N + 1) * PS(), d, &r), -EINVAL);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_int_equal(uhmm_migrate(h, q, 4 * PS(), d, &r), -EINVAL);
	assert_int_equal(uhmm_migrate(h, q, 4 * PS(), NULL, &r), -EINVAL);
	/* Memory of h through h2. */
	assert_int_equal(uhmm_migrate(h2, p, N * PS(), d2, &r), -EINVAL);
	/* Device of another context. */
	assert_int_equal(uhmm_migrate(h, p, N * PS(), d2, &r), -EINVAL);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, N, 12);
	munmap(q, 4 * PS());
	t_close(h2);
	t_close(h);
}

/* munmap part of a migrated range: the rest faults back right. */
static void migrate_partial_unmap(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, 3 * 64);

	fill_pages(p, 0, 3 * 64, 13);
	assert_migrate(h, p, 3 * 64 * PS(), d, 3 * 64, 0);
	assert_int_equal(munmap(page_at(p, 64), 64 * PS()), 0);
	assert_pages(p, 0, 64, 13);
	assert_pages(p, 128, 64, 13);
	assert_states(h, p, 0, 64, UHMM_STATE_SYSTEM, NULL);
	assert_states(h, p, 128, 64, UHMM_STATE_SYSTEM, NULL);
	/* The hole is reusable as plain memory. */
	void *q = mmap(page_at(p, 64), 64 * PS(), PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	assert_ptr_equal(q, page_at(p, 64));
	assert_zero_pages(p, 64, 64);
	fill_pages(p, 64, 64, 14);
	assert_pages(p, 64, 64, 14);
	assert_int_equal(uhmm_free(h, p, 64 * PS()), 0);
	assert_int_equal(uhmm_free(h, page_at(p, 128), 64 * PS()), 0);
	munmap(q, 64 * PS());
	t_close(h);
}

/* mremap of a migrated range: the data follows the move. */
static void migrate_remap(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, 64);
	void *dst = t_mmap(64);

	fill_pages(p, 0, 64, 15);
	assert_migrate(h, p, 64 * PS(), d, 64, 0);
	void *q = mremap(p, 64 * PS(), 64 * PS(), MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	assert_ptr_equal(q, dst);
	assert_pages(q, 0, 64, 15);
	fill_pages(q, 0, 64, 16);
	assert_pages(q, 0, 64, 16);
	assert_int_equal(uhmm_free(h, q, 64 * PS()), 0);
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(migrate),
		TEST_BOTH(migrate_none),
		TEST_BOTH(migrate_fault),
		TEST_BOTH(migrate_fault_around),
		TEST_BOTH(migrate_cpu_write),
		TEST_BOTH(migrate_partial),
		TEST_BOTH(migrate_release),
		TEST_BOTH(migrate_multiple),
		TEST_BOTH(migrate_two_devices),
		TEST_BOTH(migrate_fail_alloc),
		TEST_BOTH(migrate_fail_copy),
		TEST_BOTH(migrate_unmanaged),
		TEST_BOTH(migrate_partial_unmap),
		TEST_BOTH(migrate_remap),
	};
	return cmocka_run_group_tests_name("migrate", tests, NULL, NULL);
}
