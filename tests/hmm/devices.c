/* SPDX-License-Identifier: MIT */
/*
 * Several devices at once: snapshot (every class in one call, from each
 * device's point of view), double_map, hmm_cow_in_device.
 */
#include "hmm.h"

static void expect_snap(const uint8_t *s, size_t i, uint8_t exp, const char *who)
{
	if (s[i] != exp) {
		print_error("%s: snapshot page %zu: %#x expected %#x\n", who, i, s[i], exp);
		fail();
	}
}

/*
 * One snapshot call per device over a range holding every class uhmm can
 * produce (fault-around off, so one touch populates one page):
 *   0  never touched                 NONE
 *   1  CPU read (zero page)          ZERO|READ
 *   2  CPU write                     WRITE
 *   3  CPU write, then PROT_READ     READ
 *   4  on device A                   A: PRIVATE_LOCAL|WRITE   B: PRIVATE_REMOTE|WRITE
 *   5  on device B                   A: PRIVATE_REMOTE|WRITE  B: PRIVATE_LOCAL|WRITE
 *   6  on device A, then PROT_READ   A: PRIVATE_LOCAL|READ    B: PRIVATE_REMOTE|READ
 *   7  PROT_NONE                     ERROR
 *   8  hole (freed)                  ERROR
 *   9  device write (by B)           WRITE
 *  10  device read (by A)            ZERO|READ
 * plus a page of plain unmanaged memory (WRITE).  Coherent device memory
 * (DEV_COHERENT_*) is in snapshot_coherent; huge pages are not used (no
 * HUGE bit).  Nothing is populated or migrated.
 */
#define SN 11

static void snapshot_two_devices(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *a = t_dummy(h), *b = t_dummy(h);
	void *p = t_alloc(h, SN);
	void *buf = malloc(PS());
	uint8_t s[SN];
	assert_non_null(buf);

	assert_int_equal(touch_read(p, 1), 0);
	fill_pages(p, 2, 5, 1);
	assert_int_equal(mprotect(page_at(p, 3), PS(), PROT_READ), 0);
	assert_migrate(h, page_at(p, 4), PS(), a, 1, 0);
	assert_migrate(h, page_at(p, 5), PS(), b, 1, 0);
	assert_migrate(h, page_at(p, 6), PS(), a, 1, 0);
	assert_int_equal(mprotect(page_at(p, 6), PS(), PROT_READ), 0);
	assert_int_equal(mprotect(page_at(p, 7), PS(), PROT_NONE), 0);
	assert_int_equal(uhmm_free(h, page_at(p, 8), PS()), 0);
	fill_buf(buf, 9, 1, 1);
	assert_int_equal(uhmm_dummy_write(b, page_at(p, 9), buf, 1, NULL), 0);
	assert_int_equal(uhmm_dummy_read(a, page_at(p, 10), buf, 1, NULL), 0);

	struct uhmm_stats s0 = t_stats(h);
	memset(s, 0xAA, sizeof(s));
	assert_int_equal(uhmm_dummy_snapshot(a, p, SN, s), 0);
	expect_snap(s, 0, UHMM_SNAP_NONE, "A");
	expect_snap(s, 1, UHMM_SNAP_ZERO | UHMM_SNAP_READ, "A");
	expect_snap(s, 2, UHMM_SNAP_WRITE, "A");
	expect_snap(s, 3, UHMM_SNAP_READ, "A");
	expect_snap(s, 4, UHMM_SNAP_DEV_PRIVATE_LOCAL | UHMM_SNAP_WRITE, "A");
	expect_snap(s, 5, UHMM_SNAP_DEV_PRIVATE_REMOTE | UHMM_SNAP_WRITE, "A");
	expect_snap(s, 6, UHMM_SNAP_DEV_PRIVATE_LOCAL | UHMM_SNAP_READ, "A");
	expect_snap(s, 7, UHMM_SNAP_ERROR, "A");
	expect_snap(s, 8, UHMM_SNAP_ERROR, "A");
	expect_snap(s, 9, UHMM_SNAP_WRITE, "A");
	expect_snap(s, 10, UHMM_SNAP_ZERO | UHMM_SNAP_READ, "A");

	memset(s, 0xAA, sizeof(s));
	assert_int_equal(uhmm_dummy_snapshot(b, p, SN, s), 0);
	expect_snap(s, 0, UHMM_SNAP_NONE, "B");
	expect_snap(s, 1, UHMM_SNAP_ZERO | UHMM_SNAP_READ, "B");
	expect_snap(s, 2, UHMM_SNAP_WRITE, "B");
	expect_snap(s, 3, UHMM_SNAP_READ, "B");
	expect_snap(s, 4, UHMM_SNAP_DEV_PRIVATE_REMOTE | UHMM_SNAP_WRITE, "B");
	expect_snap(s, 5, UHMM_SNAP_DEV_PRIVATE_LOCAL | UHMM_SNAP_WRITE, "B");
	expect_snap(s, 6, UHMM_SNAP_DEV_PRIVATE_REMOTE | UHMM_SNAP_READ, "B");
	expect_snap(s, 7, UHMM_SNAP_ERROR, "B");
	expect_snap(s, 8, UHMM_SNAP_ERROR, "B");
	expect_snap(s, 9, UHMM_SNAP_WRITE, "B");
	expect_snap(s, 10, UHMM_SNAP_ZERO | UHMM_SNAP_READ, "B");

	/* Unmanaged memory: reported from the process's mappings. */
	void *u = t_mmap(1);
	memset(u, 1, PS());
	assert_int_equal(uhmm_dummy_snapshot(a, u, 1, s), 0);
	expect_snap(s, 0, UHMM_SNAP_WRITE, "A unmanaged");

	/* Snapshots never migrate or populate. */
	struct uhmm_stats s1 = t_stats(h);
	assert_int_equal(s1.cpu_faults, s0.cpu_faults);
	assert_int_equal(s1.device_faults, s0.device_faults);
	assert_int_equal(s1.pages_to_system, s0.pages_to_system);
	assert_int_equal(s1.pages_to_device, s0.pages_to_device);
	assert_int_equal(s1.pages_zero_filled, s0.pages_zero_filled);
	assert_states(h, p, 0, 1, UHMM_STATE_NONE, NULL);
	assert_states(h, p, 4, 1, UHMM_STATE_DEVICE, a);
	assert_states(h, p, 5, 1, UHMM_STATE_DEVICE, b);
	assert_states(h, p, 6, 1, UHMM_STATE_DEVICE, a);

	/* Data all still right (read-only pages made writable first: see
	 * migrate_mixed_ro_fault for a device page behind a read-only mapping). */
	assert_int_equal(mprotect(p, 8 * PS(), PROT_READ | PROT_WRITE), 0);
	assert_zero_pages(p, 0, 2);
	assert_pages(p, 2, 5, 1);
	assert_zero_pages(p, 7, 1);
	assert_pages(p, 9, 1, 1);
	assert_zero_pages(p, 10, 1);
	munmap(u, PS());
	free(buf);
	t_close(h);
}

/* ---- double_map ---- */

#define DN 16

/*
 * Two devices read the same memory; after it migrates to device B, device
 * A's read still returns the right data: it takes the pages back through
 * system memory (SYSTEM afterwards), B's next read sees them there.  A
 * write by one device is seen by the other and by the CPU.
 */
static void double_map(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *a = t_dummy(h), *b = t_dummy(h);
	void *p = t_alloc(h, DN);
	void *buf = malloc(DN * PS());
	struct uhmm_dummy_counters ca = { 0, 0 }, cb = { 0, 0 };
	assert_non_null(buf);
	fill_pages(p, 0, DN, 1);

	assert_int_equal(uhmm_dummy_read(a, p, buf, DN, &ca), 0);
	assert_buf(buf, 0, DN, 1);
	assert_int_equal(uhmm_dummy_read(b, p, buf, DN, &cb), 0);
	assert_buf(buf, 0, DN, 1);
	assert_int_equal(ca.cpages, DN);
	assert_int_equal(cb.cpages, DN);
	/* Mapped now: a second read takes no fault round. */
	uint64_t fa = ca.faults;
	assert_int_equal(uhmm_dummy_read(a, p, buf, DN, &ca), 0);
	assert_int_equal(ca.faults, fa);

	assert_migrate(h, p, DN * PS(), b, DN, 0);
	assert_states(h, p, 0, DN, UHMM_STATE_DEVICE, b);
	memset(buf, 0, DN * PS());
	assert_int_equal(uhmm_dummy_read(a, p, buf, DN, &ca), 0);
	assert_buf(buf, 0, DN, 1);
	assert_true(ca.faults > fa);
	assert_states(h, p, 0, DN, UHMM_STATE_SYSTEM, NULL);
	memset(buf, 0, DN * PS());
	assert_int_equal(uhmm_dummy_read(b, p, buf, DN, &cb), 0);
	assert_buf(buf, 0, DN, 1);

	/* B writes half (its memory holds the other half again): A sees it. */
	assert_migrate(h, page_at(p, DN / 2), DN / 2 * PS(), b, DN / 2, 0);
	fill_buf(buf, 0, DN / 2, 2);
	assert_int_equal(uhmm_dummy_write(b, p, buf, DN / 2, NULL), 0);
	fill_buf(page_at(buf, DN / 2), DN / 2, DN / 2, 3);
	assert_int_equal(uhmm_dummy_write(b, page_at(p, DN / 2), page_at(buf, DN / 2), DN / 2,
	                                  NULL), 0);
	memset(buf, 0, DN * PS());
	assert_int_equal(uhmm_dummy_read(a, p, buf, DN, NULL), 0);
	assert_buf(buf, 0, DN / 2, 2);
	assert_buf(page_at(buf, DN / 2), DN / 2, DN / 2, 3);
	/* A writes; B and the CPU see it. */
	fill_buf(buf, 0, DN, 4);
	assert_int_equal(uhmm_dummy_write(a, p, buf, DN, NULL), 0);
	memset(buf, 0, DN * PS());
	assert_int_equal(uhmm_dummy_read(b, p, buf, DN, NULL), 0);
	assert_buf(buf, 0, DN, 4);
	assert_pages(p, 0, DN, 4);
	free(buf);
	t_close(h);
}

/* ---- hmm_cow_in_device ---- */

#define CN 32

enum { C_OK = 0, C_BEFORE = 10, C_PIPE, C_AFTER, C_WRITE };

/*
 * Migrate, fork, the parent writes (with the CPU and with its device, and
 * migrates again): the child keeps the data of the fork and its own writes;
 * the parent keeps its own.
 */
static void hmm_cow_in_device(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, CN);
	void *buf = malloc(CN * PS());
	int to_child[2], to_parent[2];
	assert_non_null(buf);
	fill_pages(p, 0, CN, 1);
	assert_migrate(h, p, CN * PS(), d, CN, 0);
	assert_int_equal(pipe(to_child), 0);
	assert_int_equal(pipe(to_parent), 0);

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char c;
		int bad = C_OK;
		alarm(10);
		close(to_child[1]);
		close(to_parent[0]);
		if (check_pages(p, 0, CN, 1) != -1)
			bad = C_BEFORE;
		/* The child writes its first quarter. */
		fill_pages(p, 0, CN / 4, 5);
		if (write(to_parent[1], "x", 1) != 1 || read(to_child[0], &c, 1) != 1)
			_exit(C_PIPE);
		if (bad == C_OK && (check_pages(p, 0, CN / 4, 5) != -1 ||
		                    check_pages(p, CN / 4, 3 * CN / 4, 1) != -1))
			bad = C_AFTER;
		_exit(bad);
	}
	char c;
	close(to_child[0]);
	close(to_parent[1]);
	assert_int_equal(read(to_parent[0], &c, 1), 1);
	/* The parent: the CPU writes the second quarter, the device the third,
	 * and everything goes back to the device. */
	fill_pages(p, CN / 4, CN / 4, 2);
	assert_migrate(h, p, CN * PS(), d, CN, 0);
	fill_buf(buf, CN / 2, CN / 4, 3);
	assert_int_equal(uhmm_dummy_write(d, page_at(p, CN / 2), buf, CN / 4, NULL), 0);
	assert_int_equal(write(to_child[1], "y", 1), 1);
	assert_int_equal(wait_child(pid), C_OK);
	close(to_child[1]);
	close(to_parent[0]);

	assert_pages(p, 0, CN / 4, 1);
	assert_pages(p, CN / 4, CN / 4, 2);
	assert_pages(p, CN / 2, CN / 4, 3);
	assert_pages(p, 3 * CN / 4, CN / 4, 1);
	free(buf);
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(snapshot_two_devices),
		TEST_BOTH(double_map),
		TEST_BOTH(hmm_cow_in_device),
	};
	return cmocka_run_group_tests_name("hmm_devices", tests, NULL, NULL);
}
