/* SPDX-License-Identifier: MIT */
/* uhmm_dummy_snapshot: per-page classification, never populating or migrating. */
#include "common.h"

#define NP 10

static void expect_snap(const uint8_t *s, size_t i, uint8_t exp)
{
	if (s[i] != exp) {
		print_error("snapshot page %zu: %#x expected %#x\n", i, s[i], exp);
		fail();
	}
}

/*
 * One range holding every kind of page:
 *  0 never touched            NONE
 *  1 CPU read (zero page)     ZERO|READ
 *  2 device read (zero page)  ZERO|READ
 *  3 CPU write                WRITE
 *  4 CPU write, PROT_READ     READ
 *  5 on device A              A: DEV_PRIVATE_LOCAL|WRITE  B: DEV_PRIVATE_REMOTE|WRITE
 *  6 on device B              A: DEV_PRIVATE_REMOTE|WRITE B: DEV_PRIVATE_LOCAL|WRITE
 *  7 PROT_NONE                ERROR
 *  8 device write             WRITE
 *  9 never touched            NONE
 * Fault-around is off so that touching one page populates only that page.
 */
static void snapshot(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *a = t_dummy(h), *b = t_dummy(h);
	void *p = t_alloc(h, NP);
	void *buf = malloc(PS());
	uint8_t s[NP];

	assert_non_null(buf);
	assert_int_equal(touch_read(p, 1), 0);
	assert_int_equal(uhmm_dummy_read(a, page_at(p, 2), buf, 1, NULL), 0);
	fill_pages(p, 3, 4, 1);
	assert_int_equal(mprotect(page_at(p, 4), PS(), PROT_READ), 0);
	assert_migrate(h, page_at(p, 5), PS(), a, 1, 0);
	assert_migrate(h, page_at(p, 6), PS(), b, 1, 0);
	assert_int_equal(mprotect(page_at(p, 7), PS(), PROT_NONE), 0);
	fill_buf(buf, 8, 1, 1);
	assert_int_equal(uhmm_dummy_write(b, page_at(p, 8), buf, 1, NULL), 0);

	struct uhmm_stats s0 = t_stats(h);
	memset(s, 0xAA, sizeof(s));
	assert_int_equal(uhmm_dummy_snapshot(a, p, NP, s), 0);
	expect_snap(s, 0, UHMM_SNAP_NONE);
	expect_snap(s, 1, UHMM_SNAP_ZERO | UHMM_SNAP_READ);
	expect_snap(s, 2, UHMM_SNAP_ZERO | UHMM_SNAP_READ);
	expect_snap(s, 3, UHMM_SNAP_WRITE);
	expect_snap(s, 4, UHMM_SNAP_READ);
	expect_snap(s, 5, UHMM_SNAP_DEV_PRIVATE_LOCAL | UHMM_SNAP_WRITE);
	expect_snap(s, 6, UHMM_SNAP_DEV_PRIVATE_REMOTE | UHMM_SNAP_WRITE);
	expect_snap(s, 7, UHMM_SNAP_ERROR);
	expect_snap(s, 8, UHMM_SNAP_WRITE);
	expect_snap(s, 9, UHMM_SNAP_NONE);

	memset(s, 0xAA, sizeof(s));
	assert_int_equal(uhmm_dummy_snapshot(b, p, NP, s), 0);
	expect_snap(s, 0, UHMM_SNAP_NONE);
	expect_snap(s, 5, UHMM_SNAP_DEV_PRIVATE_REMOTE | UHMM_SNAP_WRITE);
	expect_snap(s, 6, UHMM_SNAP_DEV_PRIVATE_LOCAL | UHMM_SNAP_WRITE);
	expect_snap(s, 7, UHMM_SNAP_ERROR);

	/* Nothing was populated or migrated. */
	struct uhmm_stats s1 = t_stats(h);
	assert_int_equal(s1.cpu_faults, s0.cpu_faults);
	assert_int_equal(s1.pages_to_system, s0.pages_to_system);
	assert_int_equal(s1.pages_to_device, s0.pages_to_device);
	assert_states(h, p, 0, 1, UHMM_STATE_NONE, NULL);
	assert_states(h, p, 5, 1, UHMM_STATE_DEVICE, a);
	assert_states(h, p, 6, 1, UHMM_STATE_DEVICE, b);
	assert_states(h, p, 9, 1, UHMM_STATE_NONE, NULL);

	/* Single-page snapshots agree. */
	assert_int_equal(uhmm_dummy_snapshot(a, page_at(p, 5), 1, s), 0);
	expect_snap(s, 0, UHMM_SNAP_DEV_PRIVATE_LOCAL | UHMM_SNAP_WRITE);
	assert_int_equal(uhmm_dummy_snapshot(a, page_at(p, 7), 1, s), 0);
	expect_snap(s, 0, UHMM_SNAP_ERROR);

	/* The data is all still right. */
	assert_int_equal(mprotect(page_at(p, 7), PS(), PROT_READ | PROT_WRITE), 0);
	assert_int_equal(mprotect(page_at(p, 4), PS(), PROT_READ | PROT_WRITE), 0);
	assert_pages(p, 3, 4, 1);
	assert_pages(p, 8, 1, 1);
	assert_zero_pages(p, 0, 3);
	assert_zero_pages(p, 7, 1);
	assert_zero_pages(p, 9, 1);

	free(buf);
	t_close(h);
}

/* Snapshot of untouched memory populates nothing. */
static void snapshot_no_populate(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	const size_t n = 64;
	void *p = t_alloc(h, n);
	uint8_t s[64];

	struct uhmm_stats s0 = t_stats(h);
	memset(s, 0xAA, sizeof(s));
	assert_int_equal(uhmm_dummy_snapshot(d, p, n, s), 0);
	for (size_t i = 0; i < n; i++)
		expect_snap(s, i, UHMM_SNAP_NONE);
	assert_states(h, p, 0, n, UHMM_STATE_NONE, NULL);
	struct uhmm_stats s1 = t_stats(h);
	assert_int_equal(s1.cpu_faults, s0.cpu_faults);
	assert_int_equal(s1.device_faults, s0.device_faults);
	assert_int_equal(s1.pages_zero_filled, s0.pages_zero_filled);

	/* After a device read, a snapshot sees the zero page; a second device
	 * read costs no fault round. */
	struct uhmm_dummy_counters c = { 0, 0 };
	void *buf = malloc(n * PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_read(d, p, buf, n, &c), 0);
	assert_int_equal(c.faults, 1);
	assert_int_equal(uhmm_dummy_snapshot(d, p, n, s), 0);
	for (size_t i = 0; i < n; i++)
		expect_snap(s, i, UHMM_SNAP_ZERO | UHMM_SNAP_READ);
	free(buf);
	t_close(h);
}

/* Addresses outside any mapping report ERROR per page; the call succeeds. */
static void snapshot_unmapped(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *q = t_mmap(4);
	uint8_t s[4];

	/* Plain (unmanaged) memory: page 0 written, pages 2-3 unmapped. */
	memset(q, 1, PS());
	assert_int_equal(munmap(page_at(q, 2), 2 * PS()), 0);
	memset(s, 0xAA, sizeof(s));
	assert_int_equal(uhmm_dummy_snapshot(d, q, 4, s), 0);
	expect_snap(s, 0, UHMM_SNAP_WRITE);
	expect_snap(s, 2, UHMM_SNAP_ERROR);
	expect_snap(s, 3, UHMM_SNAP_ERROR);

	/* Managed memory freed: ERROR. */
	void *p = t_alloc(h, 4);
	fill_pages(p, 0, 4, 2);
	assert_int_equal(uhmm_free(h, p, 4 * PS()), 0);
	memset(s, 0xAA, sizeof(s));
	assert_int_equal(uhmm_dummy_snapshot(d, p, 4, s), 0);
	for (size_t i = 0; i < 4; i++)
		expect_snap(s, i, UHMM_SNAP_ERROR);

	munmap(q, 2 * PS());
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(snapshot),
		TEST_BOTH(snapshot_no_populate),
		TEST_BOTH(snapshot_unmapped),
	};
	return cmocka_run_group_tests_name("snapshot", tests, NULL, NULL);
}
