/* SPDX-License-Identifier: MIT */
/*
 * Kernel HMM migration scenarios: migrate_shared, migrate_mixed,
 * migrate_partial_unmap_fault, migrate_remap_fault (with and without
 * MREMAP_DONTUNMAP).
 */
#include "hmm.h"

/* ---- migrate_shared ---- */

/*
 * Shared anonymous memory cannot be managed, so it cannot be migrated:
 * uhmm_range_add and uhmm_migrate say -EINVAL, uhmm_query -ENOENT, and the
 * data stays where it is; a device still reaches it (unmanaged path).
 */
static void migrate_shared(void **state)
{
	const size_t n = 8;
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *s = mmap(NULL, n * PS(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	void *buf = malloc(n * PS());
	uint8_t snap[8];
	struct uhmm_page_info qi;
	assert_true(s != MAP_FAILED);
	assert_non_null(buf);
	fill_pages(s, 0, n, 1);

	assert_int_equal(uhmm_range_add(h, s, n * PS()), -EINVAL);
	struct uhmm_migrate_result r = { 7, 7 };
	assert_int_equal(uhmm_migrate(h, s, n * PS(), d, &r), -EINVAL);
	assert_int_equal(uhmm_migrate(h, s, n * PS(), NULL, NULL), -EINVAL);
	assert_int_equal(uhmm_query(h, s, 1, &qi), -ENOENT);
	assert_int_equal(uhmm_dummy_exclusive(d, s, 1), -EINVAL);
	/* A snapshot sees ordinary writable memory, never device memory. */
	assert_int_equal(uhmm_dummy_snapshot(d, s, n, snap), 0);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(snap[i], UHMM_SNAP_WRITE);
	assert_int_equal(uhmm_dummy_read(d, s, buf, n, NULL), 0);
	assert_buf(buf, 0, n, 1);
	assert_pages(s, 0, n, 1);
	struct uhmm_stats st = t_stats(h);
	assert_int_equal(st.pages_to_device, 0);
	assert_int_equal(munmap(s, n * PS()), 0);
	free(buf);
	t_close(h);
}

/* ---- migrate_mixed ---- */

/*
 * A range that is not entirely managed (a hole, or a PROT_NONE page that
 * uhmm does not manage): -EINVAL and nothing migrated.
 */
static void migrate_mixed_unmanaged(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h);
	struct uhmm_migrate_result r = { 7, 7 };

	/* A hole in the middle. */
	void *p = t_alloc(h, 3);
	fill_pages(p, 0, 3, 1);
	assert_int_equal(uhmm_free(h, page_at(p, 1), PS()), 0);
	assert_int_equal(uhmm_migrate(h, p, 3 * PS(), d, &r), -EINVAL);
	assert_states(h, p, 0, 1, UHMM_STATE_SYSTEM, NULL);
	assert_states(h, p, 2, 1, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, 1, 1);
	assert_pages(p, 2, 1, 1);

	/* A PROT_NONE page outside the managed part. */
	void *q = t_mmap(4);
	fill_pages(q, 0, 4, 2);
	assert_int_equal(mprotect(page_at(q, 3), PS(), PROT_NONE), 0);
	assert_int_equal(uhmm_range_add(h, q, 3 * PS()), 0);
	assert_int_equal(uhmm_migrate(h, q, 4 * PS(), d, &r), -EINVAL);
	assert_states(h, q, 0, 3, UHMM_STATE_SYSTEM, NULL);
	/* Plain unmanaged memory around: -EINVAL too. */
	assert_int_equal(uhmm_migrate(h, page_at(q, 3), PS(), d, &r), -EINVAL);
	struct uhmm_stats st = t_stats(h);
	assert_int_equal(st.pages_to_device, 0);
	assert_pages(q, 0, 3, 2);

	assert_int_equal(uhmm_free(h, p, PS()), 0);
	assert_int_equal(uhmm_free(h, page_at(p, 2), PS()), 0);
	assert_int_equal(uhmm_range_remove(h, q, 3 * PS()), 0);
	assert_int_equal(munmap(q, 4 * PS()), 0);
	t_close(h);
}

/*
 * Within a managed range, pages of every protection migrate (uhmm moves
 * them with UFFDIO_MOVE or copies through its own mappings, regardless of
 * the application's protection); a never-populated page is skipped, and so
 * is a page on another device (no stealing).  The zero page (populated by a
 * CPU read) holds data (zeros) and migrates.
 *   0 NONE   1 RW   2 RO   3 PROT_NONE   4 zero page   5 on device B
 *   6 already on A   7 written by device A
 */
static void migrate_mixed(void **state)
{
	const size_t n = 8;
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *a = t_dummy(h), *b = t_dummy(h);
	void *p = t_alloc(h, n);
	void *buf = malloc(n * PS());
	assert_non_null(buf);

	fill_pages(p, 1, 3, 1);
	assert_int_equal(touch_read(p, 4), 0);
	fill_pages(p, 5, 2, 1);
	assert_migrate(h, page_at(p, 5), PS(), b, 1, 0);
	assert_migrate(h, page_at(p, 6), PS(), a, 1, 0);
	fill_buf(buf, 7, 1, 1);
	assert_int_equal(uhmm_dummy_write(a, page_at(p, 7), buf, 1, NULL), 0);
	assert_int_equal(mprotect(page_at(p, 2), PS(), PROT_READ), 0);
	assert_int_equal(mprotect(page_at(p, 3), PS(), PROT_NONE), 0);
	assert_states(h, p, 0, 1, UHMM_STATE_NONE, NULL);
	assert_states(h, p, 1, 4, UHMM_STATE_SYSTEM, NULL);

	/* 1, 2, 3, 4, 6, 7 migrated; 0 and 5 skipped. */
	assert_migrate(h, p, n * PS(), a, 6, 2);
	assert_states(h, p, 0, 1, UHMM_STATE_NONE, NULL);
	assert_states(h, p, 1, 4, UHMM_STATE_DEVICE, a);
	assert_states(h, p, 5, 1, UHMM_STATE_DEVICE, b);
	assert_states(h, p, 6, 2, UHMM_STATE_DEVICE, a);

	/* The device still honours the protection of pages it holds. */
	assert_int_equal(uhmm_dummy_read(a, page_at(p, 3), buf, 1, NULL), -EFAULT);
	assert_int_equal(uhmm_dummy_write(a, page_at(p, 2), buf, 1, NULL), -EPERM);
	assert_int_equal(uhmm_dummy_read(a, page_at(p, 2), buf, 1, NULL), 0);
	assert_buf(buf, 2, 1, 1);
	/* B's page: A's read takes it back through system memory. */
	assert_int_equal(uhmm_dummy_read(a, page_at(p, 5), buf, 1, NULL), 0);
	assert_buf(buf, 5, 1, 1);
	assert_states(h, p, 5, 1, UHMM_STATE_SYSTEM, NULL);

	/* With the protection restored, CPU reads fault every page back. */
	assert_int_equal(mprotect(p, n * PS(), PROT_READ | PROT_WRITE), 0);
	assert_zero_pages(p, 0, 1);
	assert_pages(p, 1, 3, 1);
	assert_zero_pages(p, 4, 1);
	assert_pages(p, 5, 3, 1);
	free(buf);
	t_close(h);
}

/*
 * A device-resident page whose mapping is read-only (made so before or
 * after the migration) faults back on a CPU read, comes back with
 * uhmm_migrate(NULL), and the device reads it, in any order.
 */
static void migrate_mixed_ro_fault(void **state)
{
	const size_t n = 4;
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, n);
	void *buf = malloc(PS());
	assert_non_null(buf);
	fill_pages(p, 0, n, 3);
	/* 0, 1: read-only before the migration; 2, 3: after. */
	assert_int_equal(mprotect(p, 2 * PS(), PROT_READ), 0);
	assert_migrate(h, p, n * PS(), d, n, 0);
	assert_int_equal(mprotect(page_at(p, 2), 2 * PS(), PROT_READ), 0);
	assert_states(h, p, 0, n, UHMM_STATE_DEVICE, d);

	assert_int_equal(uhmm_dummy_read(d, page_at(p, 1), buf, 1, NULL), 0);
	assert_buf(buf, 1, 1, 3);
	/* Explicit migration back: every page comes home. */
	assert_migrate(h, page_at(p, 1), 2 * PS(), NULL, 2, 0);
	assert_states(h, p, 1, 2, UHMM_STATE_SYSTEM, NULL);
	/* CPU reads fault the others back. */
	assert_pages(p, 0, n, 3);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	free(buf);
	t_close(h);
}

/* ---- migrate_partial_unmap_fault ---- */

#define PU 24

/*
 * Migrate a range to a host-backed test device, unmap a third of it
 * (start, middle, end; then with uhmm_free): the rest faults back right,
 * the unmapped part's device pages are freed (page_free once each), and
 * the device memory is empty at the end.
 */
static void partial_unmap_one(void **state, size_t first, bool use_free)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, true, 64);
	void *p = t_alloc(h, PU);
	const size_t cut = PU / 3;

	fill_pages(p, 0, PU, (unsigned)first);
	assert_migrate(h, p, PU * PS(), t->dev, PU, 0);
	assert_int_equal(uhmm_devmem_used(t->m), PU);
	tdev_reset_counts(t);

	if (use_free)
		assert_int_equal(uhmm_free(h, page_at(p, first), cut * PS()), 0);
	else
		assert_int_equal(munmap(page_at(p, first), cut * PS()), 0);
	/* The kernel reports the unmap as an event: the device pages are freed
	 * when it is handled (bounded wait); uhmm_free frees them at once. */
	if (!use_free)
		assert_true(wait_ulong(&t->nfree, cut));
	assert_freed_once(t, cut);
	assert_int_equal(uhmm_devmem_used(t->m), PU - cut);
	assert_true(wait_query(h, page_at(p, first), -ENOENT, UHMM_STATE_NONE));

	/* The rest faults back right. */
	if (first > 0)
		assert_pages(p, 0, first, (unsigned)first);
	if (first + cut < PU)
		assert_pages(p, first + cut, PU - first - cut, (unsigned)first);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_freed_once(t, PU);
	if (first > 0)
		assert_int_equal(uhmm_free(h, p, first * PS()), 0);
	if (first + cut < PU)
		assert_int_equal(uhmm_free(h, page_at(p, first + cut), (PU - first - cut) * PS()), 0);
	t_close(h);
	assert_int_equal(atomic_load(&t->bad), 0);
	tdev_free(t);
}

static void migrate_partial_unmap_fault(void **state)
{
	partial_unmap_one(state, 0, false);
	partial_unmap_one(state, PU / 3, false);
	partial_unmap_one(state, 2 * PU / 3, false);
	partial_unmap_one(state, PU / 3, true);
}

/* ---- migrate_remap_fault ---- */

#define RN 16

/*
 * mremap of a range whose pages live on the device (half of them; the
 * other half in system memory): the data follows the move at once, the
 * device pages follow it too (they are not freed by the move), and fault
 * back right at the new address.  Without DONTUNMAP the old addresses are
 * gone; with it they stay mapped, managed and empty (zeros).  The REMAP
 * event may be handled just after mremap returns: state checks poll.
 */
static void remap_one(void **state, bool dontunmap, bool migrate_after)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, true, 64);
	void *p = t_alloc(h, RN);
	unsigned seed = 20 + dontunmap * 2 + migrate_after;

	fill_pages(p, 0, RN, seed);
	if (!migrate_after)
		assert_migrate(h, p, RN / 2 * PS(), t->dev, RN / 2, 0);
	tdev_reset_counts(t);
	void *q;
	/* To a reserved spot (MREMAP_FIXED): this kernel refuses some
	 * DONTUNMAP moves to an address of its own choosing (-EINVAL), with or
	 * without uhmm. */
	void *dst = mmap(NULL, RN * PS(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(dst != MAP_FAILED);
	q = mremap(p, RN * PS(), RN * PS(),
	           MREMAP_MAYMOVE | MREMAP_FIXED | (dontunmap ? MREMAP_DONTUNMAP : 0), dst);
	assert_ptr_equal(q, dst);

	if (migrate_after) {
		/* The moved range is managed at its new address: wait for the
		 * event, then migrate there. */
		assert_true(wait_query(h, q, 0, UHMM_STATE_SYSTEM));
		assert_migrate(h, q, RN / 2 * PS(), t->dev, RN / 2, 0);
	} else {
		/* Data correctness holds at once, before any state settles. */
		assert_pages(q, 0, RN, seed);
		/* The device pages were not freed by the move, only by coming back. */
		assert_int_equal(uhmm_devmem_used(t->m), 0);
		assert_freed_once(t, RN / 2);
		assert_migrate(h, q, RN / 2 * PS(), t->dev, RN / 2, 0);
	}
	assert_states(h, q, 0, RN / 2, UHMM_STATE_DEVICE, t->dev);
	assert_int_equal(uhmm_devmem_used(t->m), RN / 2);
	assert_pages(q, 0, RN, seed);
	assert_states(h, q, 0, RN, UHMM_STATE_SYSTEM, NULL);

	if (dontunmap) {
		/* Old addresses: still mapped and managed, empty. */
		assert_true(wait_query(h, p, 0, UHMM_STATE_NONE));
		assert_zero_pages(p, 0, RN);
		assert_migrate(h, p, RN * PS(), t->dev, RN, 0);
		assert_zero_pages(p, 0, RN);
		assert_int_equal(uhmm_free(h, p, RN * PS()), 0);
	} else {
		assert_true(wait_query(h, p, -ENOENT, UHMM_STATE_NONE));
	}
	assert_int_equal(uhmm_free(h, q, RN * PS()), 0);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	t_close(h);
	assert_int_equal(atomic_load(&t->bad), 0);
	tdev_free(t);
}

static void migrate_remap_fault(void **state)
{
	remap_one(state, false, false);
	remap_one(state, false, true);
}

static void migrate_remap_fault_dontunmap(void **state)
{
	remap_one(state, true, false);
	remap_one(state, true, true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(migrate_shared),
		TEST_BOTH(migrate_mixed_unmanaged),
		TEST_BOTH(migrate_mixed),
		TEST_BOTH(migrate_mixed_ro_fault),
		TEST_BOTH(migrate_partial_unmap_fault),
		TEST_BOTH(migrate_remap_fault),
		TEST_BOTH(migrate_remap_fault_dontunmap),
	};
	return cmocka_run_group_tests_name("hmm_migrate", tests, NULL, NULL);
}
