/* SPDX-License-Identifier: MIT */
/*
 * A device that is not host-backed: uhmm must go through its
 * copy_to_device / copy_from_device ops (device memory here is a malloc'd
 * array of pages indexed by page index), both ways, and survive failures.
 */
#include "testdev.h"

#define N 32
#define DEVPAGES 64

/* Migration both ways through the copy path; the data really lives in the device. */
static void copydev_migrate(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, DEVPAGES);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 1);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, t->dev);
	assert_int_equal(atomic_load(&t->to_pages), N);
	assert_true(atomic_load(&t->to_calls) >= 1);
	assert_int_equal(uhmm_devmem_used(t->m), N);
	assert_int_equal(tdev_count_pattern_pages(t, N, 1), N);
	assert_freed_once(t, 0);

	/* Back through CPU faults: copy_from_device for every page. */
	assert_pages(p, 0, N, 1);
	assert_int_equal(atomic_load(&t->from_pages), N);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_freed_once(t, N);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);

	/* Explicit migration back. */
	tdev_reset_counts(t);
	fill_pages(p, 0, N, 2);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	assert_int_equal(tdev_count_pattern_pages(t, N, 2), N);
	assert_migrate(h, p, N * PS(), NULL, N, 0);
	assert_int_equal(atomic_load(&t->from_pages), 2 * N);
	assert_freed_once(t, N);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, N, 2);

	/* The device pages were really the source: change them on the
	 * device side, the CPU sees the device's data. */
	tdev_reset_counts(t);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	size_t changed = 0;
	for (size_t d = 0; d < DEVPAGES; d++) {
		uint64_t *w = (uint64_t *)(t->store + d * PS());
		for (size_t i = 0; i < N; i++)
			if (w[0] == pat(2, i, 0) && w[1] == pat(2, i, 1)) {
				fill_buf(w, i, 1, 3);
				changed++;
				break;
			}
	}
	assert_int_equal(changed, N);
	assert_pages(p, 0, N, 3);
	assert_freed_once(t, N);
	t_close(h);
	assert_int_equal(atomic_load(&t->ndestroy), 1);
	tdev_free(t);
}

/* A CPU write to device-resident pages: data comes back, then the write. */
static void copydev_cpu_write(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, DEVPAGES);
	uint64_t *p = t_alloc(h, N);
	size_t wpp = words_per_page();

	fill_pages(p, 0, N, 4);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	for (size_t i = 0; i < N; i++)
		p[i * wpp + 7] = ~(uint64_t)i;
	for (size_t i = 0; i < N; i++)
		for (size_t j = 0; j < wpp; j++) {
			uint64_t exp = j == 7 ? ~(uint64_t)i : pat(4, i, j);
			if (p[i * wpp + j] != exp) {
				print_error("page %zu word %zu\n", i, j);
				fail();
			}
		}
	assert_freed_once(t, N);
	t_close(h);
	tdev_free(t);
}

/* copy_to_device fails: every page skipped, stays in system memory, nothing leaks. */
static void copydev_fail_to(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, DEVPAGES);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 5);
	atomic_store(&t->fail_to, TDEV_FAIL_ALWAYS);
	assert_migrate(h, p, N * PS(), t->dev, 0, N);
	assert_true(atomic_load(&t->to_tries) >= 1);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_int_equal(atomic_load(&t->bad), 0);
	assert_pages(p, 0, N, 5);

	/* Half the calls fail: what was copied is on the device, the rest is
	 * in system memory, counts agree with the states, no data lost. */
	atomic_store(&t->fail_to, TDEV_FAIL_ODD);
	struct uhmm_migrate_result r;
	assert_int_equal(uhmm_migrate(h, p, N * PS(), t->dev, &r), 0);
	assert_int_equal(r.migrated + r.skipped, N);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_DEVICE), r.migrated);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_SYSTEM), r.skipped);
	assert_int_equal(uhmm_devmem_used(t->m), r.migrated);
	assert_int_equal(tdev_count_pattern_pages(t, N, 5) >= r.migrated, 1);
	assert_pages(p, 0, N, 5);
	assert_int_equal(uhmm_devmem_used(t->m), 0);

	atomic_store(&t->fail_to, TDEV_OK);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	assert_pages(p, 0, N, 5);
	assert_int_equal(atomic_load(&t->bad), 0);
	t_close(h);
	tdev_free(t);
}

/* copy_from_device fails: explicit migration back skips, pages stay on the device. */
static void copydev_fail_from(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, DEVPAGES);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 6);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	atomic_store(&t->fail_from, TDEV_FAIL_ALWAYS);
	assert_migrate(h, p, N * PS(), NULL, 0, N);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, t->dev);
	assert_int_equal(uhmm_devmem_used(t->m), N);
	assert_int_equal(tdev_count_pattern_pages(t, N, 6), N);
	assert_freed_once(t, 0);

	atomic_store(&t->fail_from, TDEV_FAIL_ODD);
	struct uhmm_migrate_result r;
	assert_int_equal(uhmm_migrate(h, p, N * PS(), NULL, &r), 0);
	assert_int_equal(r.migrated + r.skipped, N);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_SYSTEM), r.migrated);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_DEVICE), r.skipped);
	assert_int_equal(uhmm_devmem_used(t->m), r.skipped);
	assert_freed_once(t, r.migrated);

	atomic_store(&t->fail_from, TDEV_OK);
	assert_migrate(h, p, N * PS(), NULL, N, 0);
	assert_freed_once(t, N);
	assert_pages(p, 0, N, 6);
	t_close(h);
	tdev_free(t);
}

/* Migration between a copy device and a host-backed one (through system memory). */
static void copydev_two_kinds(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *c = tdev_create(h, false, DEVPAGES);
	struct tdev *t = tdev_create(h, true, DEVPAGES);
	struct uhmm_device *dm = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 7);
	assert_migrate(h, p, N / 2 * PS(), c->dev, N / 2, 0);
	assert_migrate(h, p, N * PS(), t->dev, N / 2, N / 2);
	assert_states(h, p, 0, N / 2, UHMM_STATE_DEVICE, c->dev);
	assert_states(h, p, N / 2, N / 2, UHMM_STATE_DEVICE, t->dev);

	/* The dummy reads both (they come back through system memory). */
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_read(dm, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 7);
	free(buf);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_DEVICE), 0);
	assert_freed_once(c, N / 2);
	assert_freed_once(t, N / 2);

	assert_migrate(h, p, N * PS(), c->dev, N, 0);
	assert_pages(p, 0, N, 7);
	t_close(h);
	tdev_free(c);
	tdev_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(copydev_migrate),
		TEST_BOTH(copydev_cpu_write),
		TEST_BOTH(copydev_fail_to),
		TEST_BOTH(copydev_fail_from),
		TEST_BOTH(copydev_two_kinds),
	};
	return cmocka_run_group_tests_name("copydev", tests, NULL, NULL);
}
