/* SPDX-License-Identifier: MIT */
/*
 * Device access to anonymous managed memory through the dummy device
 * (the kernel self-tests' anon_* scenarios).
 */
#include "common.h"

#define N 64

/*
 * Device reads: untouched memory reads as zeros for exactly one fault
 * round; a second read of the now-mapped pages costs no fault round; data
 * the CPU wrote afterwards is seen by the device.
 */
static void anon_read(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	unsigned char *buf = malloc(N * PS());
	struct uhmm_dummy_counters c = { 0, 0 };
	struct uhmm_stats s0 = t_stats(h);

	assert_non_null(buf);
	assert_states(h, p, 0, N, UHMM_STATE_NONE, NULL);

	memset(buf, 0xAB, N * PS());
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, &c), 0);
	assert_int_equal(c.cpages, N);
	assert_int_equal(c.faults, 1);
	for (size_t i = 0; i < N * PS(); i++)
		if (buf[i] != 0) {
			print_error("byte %zu = %#x\n", i, buf[i]);
			fail();
		}
	struct uhmm_stats s1 = t_stats(h);
	assert_true(s1.device_faults >= s0.device_faults + 1);

	/* Already mapped for the device: no fault round. */
	memset(&c, 0, sizeof(c));
	memset(buf, 0xAB, N * PS());
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, &c), 0);
	assert_int_equal(c.cpages, N);
	assert_int_equal(c.faults, 0);
	assert_int_equal(check_byte(buf, 0, N, 0), -1);

	/* The CPU reads zeros too, and the device sees what the CPU writes. */
	assert_zero_pages(p, 0, N);
	fill_pages(p, 0, N, 1);
	memset(&c, 0, sizeof(c));
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, &c), 0);
	assert_int_equal(c.cpages, N);
	assert_buf(buf, 0, N, 1);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);

	/* Counters accumulate (c is added to, not overwritten). */
	struct uhmm_dummy_counters c2 = { 100, 100 };
	assert_int_equal(uhmm_dummy_read(d, page_at(p, 3), buf, 2, &c2), 0);
	assert_int_equal(c2.cpages, 102);
	assert_buf(buf, 3, 2, 1);

	/* NULL counters are allowed. */
	assert_int_equal(uhmm_dummy_read(d, p, buf, 1, NULL), 0);
	assert_buf(buf, 0, 1, 1);

	free(buf);
	t_close(h);
}

/* A device read of a PROT_NONE range fails with -EFAULT, buffer untouched. */
static void anon_read_prot(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	unsigned char *buf = malloc(N * PS());
	struct uhmm_dummy_counters c = { 0, 0 };

	assert_non_null(buf);
	fill_pages(p, 0, N, 2);
	assert_int_equal(mprotect(p, N * PS(), PROT_NONE), 0);

	memset(buf, 0xAB, N * PS());
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, &c), -EFAULT);
	assert_int_equal(check_byte(buf, 0, N, 0xAB), -1);

	/* A single page too. */
	assert_int_equal(uhmm_dummy_read(d, page_at(p, 5), buf, 1, &c), -EFAULT);
	assert_int_equal(check_byte(buf, 0, N, 0xAB), -1);

	/* Readable again: the data is there. */
	assert_int_equal(mprotect(p, N * PS(), PROT_READ), 0);
	memset(&c, 0, sizeof(c));
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, &c), 0);
	assert_int_equal(c.cpages, N);
	assert_buf(buf, 0, N, 2);
	assert_pages(p, 0, N, 2);

	assert_int_equal(mprotect(p, N * PS(), PROT_READ | PROT_WRITE), 0);
	free(buf);
	t_close(h);
}

/* Device writes to untouched memory; the CPU sees the data. */
static void anon_write(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	void *buf = malloc(N * PS());
	struct uhmm_dummy_counters c = { 0, 0 };

	assert_non_null(buf);
	fill_buf(buf, 0, N, 3);
	assert_int_equal(uhmm_dummy_write(d, p, buf, N, &c), 0);
	assert_int_equal(c.cpages, N);
	assert_int_equal(c.faults, 1);

	assert_pages(p, 0, N, 3);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);

	/* The device reads back what it wrote; a second write needs no fault. */
	memset(buf, 0, N * PS());
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 3);

	fill_buf(buf, 0, N, 4);
	memset(&c, 0, sizeof(c));
	assert_int_equal(uhmm_dummy_write(d, p, buf, N, &c), 0);
	assert_int_equal(c.cpages, N);
	assert_int_equal(c.faults, 0);
	assert_pages(p, 0, N, 4);

	/* CPU write, then device read of a sub-range. */
	fill_pages(p, 10, 20, 5);
	assert_int_equal(uhmm_dummy_read(d, page_at(p, 10), buf, 20, NULL), 0);
	assert_buf(buf, 10, 20, 5);

	free(buf);
	t_close(h);
}

/* A device write to read-only memory fails with -EPERM; after mprotect RW it works. */
static void anon_write_prot(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	void *buf = malloc(N * PS());
	struct uhmm_dummy_counters c = { 0, 0 };

	assert_non_null(buf);
	/* The device reads the zero page first. */
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, &c), 0);
	assert_int_equal(c.faults, 1);
	assert_int_equal(check_byte(buf, 0, N, 0), -1);

	assert_int_equal(mprotect(p, N * PS(), PROT_READ), 0);
	fill_buf(buf, 0, N, 6);
	assert_int_equal(uhmm_dummy_write(d, p, buf, N, &c), -EPERM);
	assert_zero_pages(p, 0, N);

	/* Device still reads zeros. */
	memset(buf, 0xAB, N * PS());
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), 0);
	assert_int_equal(check_byte(buf, 0, N, 0), -1);

	assert_int_equal(mprotect(p, N * PS(), PROT_READ | PROT_WRITE), 0);
	fill_buf(buf, 0, N, 6);
	memset(&c, 0, sizeof(c));
	assert_int_equal(uhmm_dummy_write(d, p, buf, N, &c), 0);
	assert_int_equal(c.cpages, N);
	assert_pages(p, 0, N, 6);

	free(buf);
	t_close(h);
}

/*
 * The device wrote the pages (so they are mapped writable in its page
 * table), then the application makes them read-only: a device write must
 * now fail with -EPERM and leave the data alone.
 */
static void anon_write_prot_after_map(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	void *buf = malloc(N * PS());

	assert_non_null(buf);
	fill_buf(buf, 0, N, 6);
	assert_int_equal(uhmm_dummy_write(d, p, buf, N, NULL), 0);
	assert_pages(p, 0, N, 6);

	assert_int_equal(mprotect(p, N * PS(), PROT_READ), 0);
	fill_buf(buf, 0, N, 7);
	assert_int_equal(uhmm_dummy_write(d, p, buf, N, NULL), -EPERM);
	assert_pages(p, 0, N, 6);

	assert_int_equal(mprotect(p, N * PS(), PROT_READ | PROT_WRITE), 0);
	assert_int_equal(uhmm_dummy_write(d, p, buf, N, NULL), 0);
	assert_pages(p, 0, N, 7);

	free(buf);
	t_close(h);
}

/* Repeated CPU writes / device reads (and the other way) stay correct. */
static void anon_read_multiple(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	void *buf = malloc(N * PS());

	assert_non_null(buf);
	for (unsigned r = 0; r < 10; r++) {
		struct uhmm_dummy_counters c = { 0, 0 };
		fill_pages(p, 0, N, 10 + r);
		memset(buf, 0, N * PS());
		assert_int_equal(uhmm_dummy_read(d, p, buf, N, &c), 0);
		assert_int_equal(c.cpages, N);
		assert_buf(buf, 0, N, 10 + r);

		fill_buf(buf, 0, N, 100 + r);
		assert_int_equal(uhmm_dummy_write(d, p, buf, N, NULL), 0);
		assert_pages(p, 0, N, 100 + r);
	}
	free(buf);
	t_close(h);
}

/* Device reads pages that live in device memory (its own or another's). */
static void anon_read_device_resident(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *a = t_dummy(h), *b = t_dummy(h);
	void *p = t_alloc(h, N);
	void *buf = malloc(N * PS());

	assert_non_null(buf);
	fill_pages(p, 0, N, 11);
	assert_migrate(h, p, N * PS(), a, N, 0);

	/* Its own pages: read in place, they stay on the device. */
	memset(buf, 0, N * PS());
	assert_int_equal(uhmm_dummy_read(a, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 11);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, a);

	/* Another device's pages come back through system memory. */
	memset(buf, 0, N * PS());
	assert_int_equal(uhmm_dummy_read(b, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 11);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_DEVICE), 0);
	assert_pages(p, 0, N, 11);

	/* Device write into pages resident on it; the CPU sees it. */
	assert_migrate(h, p, N * PS(), a, N, 0);
	fill_buf(buf, 0, N, 12);
	assert_int_equal(uhmm_dummy_write(a, p, buf, N, NULL), 0);
	assert_pages(p, 0, N, 12);

	free(buf);
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(anon_read),
		TEST_BOTH(anon_read_prot),
		TEST_BOTH(anon_write),
		TEST_BOTH(anon_write_prot),
		TEST_BOTH(anon_write_prot_after_map),
		TEST_BOTH(anon_read_multiple),
		TEST_BOTH(anon_read_device_resident),
	};
	return cmocka_run_group_tests_name("anon", tests, NULL, NULL);
}
