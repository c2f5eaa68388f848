/* SPDX-License-Identifier: MIT */
/*
 * One test per invalidation source: the mirror's invalidate callback runs
 * with the right range and event, before the change is visible.
 *
 * uhmm-initiated changes (migration, uhmm_range_remove, uhmm_free,
 * uhmm_mprotect) are checked from inside the callback: the watched page is
 * still in its old state there (uhmm_query, which is lock-free, mincore,
 * process_vm_readv/writev, or the old device page's host copy).
 *
 * Changes the kernel reports (munmap, madvise, mremap) reach uhmm as
 * userfaultfd events *after* the kernel made them (the system call only
 * waits for the event to be read): those tests assert that the callback
 * ran (bounded wait) with the right range and event, and what happens to
 * the data and the device pages.
 *
 * Also: the read_begin / read_retry protocol.
 */
#include "hmm.h"

#define N 16

struct fixture {
	struct uhmm *h;
	struct tdev *t;     /* host-backed test device with the logging mirror */
	struct ilog *l;
	struct uhmm_mirror *m;
};

static void fx_open(void **state, struct fixture *f, bool nofa)
{
	f->h = nofa ? t_open_nofa(state) : t_open(state);
	f->t = tdev_create(f->h, true, 64);
	f->l = ilog_new(f->h);
	f->m = ilog_mirror(f->t, f->l);
}

static void fx_close(struct fixture *f)
{
	assert_int_equal(uhmm_mirror_unregister(f->m), 0);
	t_close(f->h);
	assert_int_equal(atomic_load(&f->t->bad), 0);
	tdev_free(f->t);
	free(f->l);
}

/* The device maps [p, p + n pages) for read (its entries are now live). */
static void dev_map(struct fixture *f, void *p, size_t n)
{
	struct uhmm_range_entry *e = calloc(n, sizeof(*e));
	assert_non_null(e);
	assert_int_equal(uhmm_range_fault(f->m, p, n, UHMM_RANGE_READ, e), 0);
	free(e);
}

/* The local entry (block index) of a page on the fixture's device. */
static size_t dev_index(struct fixture *f, void *page)
{
	struct uhmm_range_entry e;
	memset(&e, 0, sizeof(e));
	assert_int_equal(uhmm_range_fault(f->m, page, 1, UHMM_RANGE_SNAPSHOT, &e), 0);
	assert_true(e.flags & UHMM_ENTRY_DEVICE_LOCAL);
	assert_ptr_equal(e.mem, f->t->m);
	return e.index;
}

static void expect_found(struct ilog *l, int i, const char *what)
{
	if (i < 0) {
		print_error("no %s invalidation logged; log:\n", what);
		ilog_print(l);
		fail();
	}
}

/* ---- munmap → UNMAP (kernel-reported) ---- */
static void inval_munmap(void **state)
{
	struct fixture f;
	fx_open(state, &f, false);
	void *p = t_alloc(f.h, N);
	fill_pages(p, 0, N, 1);
	dev_map(&f, p, N);
	/* Page 5 lives on the device: its device page must be freed. */
	assert_migrate(f.h, page_at(p, 5), PS(), f.t->dev, 1, 0);
	tdev_reset_counts(f.t);

	unsigned from = atomic_load(&f.l->n);
	uint64_t seq = uhmm_mirror_read_begin(f.m);
	assert_int_equal(munmap(page_at(p, 4), 4 * PS()), 0);
	/* The kernel reports the unmap after the fact: bounded wait. */
	int i = ilog_wait(f.l, from, UHMM_EVENT_UNMAP, page_at(p, 4), page_at(p, 8));
	expect_found(f.l, i, "UNMAP");
	assert_int_equal(f.l->e[i].start, (uintptr_t)page_at(p, 4));
	assert_int_equal(f.l->e[i].end, (uintptr_t)page_at(p, 8));
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 1);
	/* The unmapped part is no longer managed; its device page is freed. */
	assert_true(wait_query(f.h, page_at(p, 4), -ENOENT, UHMM_STATE_NONE));
	assert_true(wait_ulong(&f.t->nfree, 1));
	assert_freed_once(f.t, 1);
	assert_int_equal(uhmm_devmem_used(f.t->m), 0);
	/* The rest is intact and still managed. */
	assert_pages(p, 0, 4, 1);
	assert_pages(p, 8, N - 8, 1);
	assert_int_equal(uhmm_free(f.h, p, 4 * PS()), 0);
	assert_int_equal(uhmm_free(f.h, page_at(p, 8), (N - 8) * PS()), 0);
	fx_close(&f);
}

/* ---- madvise(MADV_DONTNEED) → DISCARD (kernel-reported) ---- */
static void inval_madvise_dontneed(void **state)
{
	struct fixture f;
	fx_open(state, &f, false);
	void *p = t_alloc(f.h, N);
	fill_pages(p, 0, N, 2);
	dev_map(&f, p, N);
	assert_migrate(f.h, page_at(p, 3), PS(), f.t->dev, 1, 0);
	tdev_reset_counts(f.t);

	unsigned from = atomic_load(&f.l->n);
	uint64_t seq = uhmm_mirror_read_begin(f.m);
	assert_int_equal(madvise(page_at(p, 2), 4 * PS(), MADV_DONTNEED), 0);
	int i = ilog_wait(f.l, from, UHMM_EVENT_DISCARD, page_at(p, 2), page_at(p, 6));
	expect_found(f.l, i, "DISCARD");
	assert_int_equal(f.l->e[i].start, (uintptr_t)page_at(p, 2));
	assert_int_equal(f.l->e[i].end, (uintptr_t)page_at(p, 6));
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 1);
	/* The device-resident page was discarded too: its device page freed. */
	assert_true(wait_ulong(&f.t->nfree, 1));
	assert_freed_once(f.t, 1);
	assert_true(wait_query(f.h, page_at(p, 3), 0, UHMM_STATE_NONE));
	assert_zero_pages(p, 2, 4);
	assert_pages(p, 0, 2, 2);
	assert_pages(p, 6, N - 6, 2);
	assert_int_equal(uhmm_devmem_used(f.t->m), 0);
	fx_close(&f);
}

/*
 * madvise(MADV_FREE) → DISCARD.  The kernel may or may not drop the data
 * of a lazily freed page; whatever it keeps, the CPU and a device must
 * agree afterwards (each page reads as its old data or as zeros).
 */
static void inval_madvise_free(void **state)
{
	struct fixture f;
	fx_open(state, &f, false);
	struct uhmm_device *d = t_dummy(f.h);
	void *p = t_alloc(f.h, N);
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	fill_pages(p, 0, N, 3);
	dev_map(&f, p, N);
	assert_migrate(f.h, page_at(p, 3), PS(), f.t->dev, 1, 0);
	tdev_reset_counts(f.t);

	unsigned from = atomic_load(&f.l->n);
	assert_int_equal(madvise(page_at(p, 2), 4 * PS(), MADV_FREE), 0);
	int i = ilog_wait(f.l, from, UHMM_EVENT_DISCARD, page_at(p, 2), page_at(p, 6));
	expect_found(f.l, i, "DISCARD");
	assert_int_equal(f.l->e[i].start, (uintptr_t)page_at(p, 2));
	assert_int_equal(f.l->e[i].end, (uintptr_t)page_at(p, 6));
	assert_true(wait_ulong(&f.t->nfree, 1));
	assert_freed_once(f.t, 1);

	/* Device read first, then the CPU: both see old data or zeros, the same. */
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), 0);
	for (size_t k = 0; k < N; k++) {
		const void *bp = page_at(buf, k);
		bool dev_old = page_is(bp, k, 3), dev_zero = page_is_zero(bp);
		bool cpu_old = page_is(page_at(p, k), k, 3), cpu_zero = page_is_zero(page_at(p, k));
		if (k < 2 || k >= 6) {
			assert_true(dev_old);
			assert_true(cpu_old);
		} else {
			assert_true(dev_old || dev_zero);
			assert_true(cpu_old || cpu_zero);
			assert_int_equal(dev_old, cpu_old);
		}
	}
	/* Written again, the pages keep the new data (MADV_FREE is cancelled). */
	fill_pages(p, 0, N, 4);
	assert_migrate(f.h, p, N * PS(), d, N, 0);
	assert_pages(p, 0, N, 4);
	free(buf);
	fx_close(&f);
}

/* ---- mremap → REMAP (kernel-reported) ---- */
static void inval_mremap(void **state)
{
	struct fixture f;
	fx_open(state, &f, false);
	void *p = t_alloc(f.h, N);
	fill_pages(p, 0, N, 5);
	dev_map(&f, p, N);
	assert_migrate(f.h, page_at(p, 1), 2 * PS(), f.t->dev, 2, 0);
	/* Destination: a reserved spot elsewhere. */
	void *dst = mmap(NULL, N * PS(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(dst != MAP_FAILED);

	unsigned from = atomic_load(&f.l->n);
	uint64_t seq = uhmm_mirror_read_begin(f.m);
	void *q = mremap(p, N * PS(), N * PS(), MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	assert_ptr_equal(q, dst);
	int i = ilog_wait(f.l, from, UHMM_EVENT_REMAP, p, page_at(p, N));
	expect_found(f.l, i, "REMAP");
	assert_int_equal(f.l->e[i].start, (uintptr_t)p);
	assert_int_equal(f.l->e[i].end, (uintptr_t)page_at(p, N));
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 1);
	/* The data and the device-resident pages followed the move. */
	assert_true(wait_query(f.h, p, -ENOENT, UHMM_STATE_NONE));
	assert_true(wait_query(f.h, page_at(q, 1), 0, UHMM_STATE_DEVICE));
	assert_states(f.h, q, 1, 2, UHMM_STATE_DEVICE, f.t->dev);
	assert_int_equal(uhmm_devmem_used(f.t->m), 2);
	assert_pages(q, 0, N, 5);
	assert_int_equal(uhmm_devmem_used(f.t->m), 0);
	assert_int_equal(uhmm_free(f.h, q, N * PS()), 0);
	fx_close(&f);
}

/*
 * ---- migration by another device → MIGRATE ----
 * System → device B: device A (the mirror) hears it while the page is still
 * in system memory, mapped, with its data.  Device A → system by device B's
 * fault: A hears it while the page still lives in A's memory.  A migration
 * to A itself also invalidates A (its system-memory mappings go stale).
 */
static void inval_migrate(void **state)
{
	struct fixture f;
	fx_open(state, &f, true);
	struct uhmm_device *b = t_dummy(f.h);
	void *p = t_alloc(f.h, N);
	void *buf = malloc(PS());
	assert_non_null(buf);
	fill_pages(p, 0, N, 6);
	dev_map(&f, p, N);

	/* System → B. */
	f.l->watch[0] = (uintptr_t)page_at(p, 1);
	f.l->probe_rw = true;
	unsigned from = atomic_load(&f.l->n);
	uint64_t seq = uhmm_mirror_read_begin(f.m);
	assert_migrate(f.h, p, 4 * PS(), b, 4, 0);
	int i = ilog_find_from(f.l, from, UHMM_EVENT_MIGRATE, page_at(p, 1), page_at(p, 2));
	expect_found(f.l, i, "MIGRATE (to B)");
	assert_true(f.l->e[i].start >= (uintptr_t)p);
	assert_true(f.l->e[i].end <= (uintptr_t)page_at(p, 4));
	struct ilog_probe *pr = &f.l->e[i].p[0];
	assert_int_equal(pr->qrc, 0);
	assert_int_equal(pr->qi.state, UHMM_STATE_SYSTEM);
	assert_null(pr->qi.device);
	assert_int_equal(pr->resident, 1);
	assert_int_equal(pr->readable, 1);
	assert_int_equal(pr->word0, pat(6, 1, 0));
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 1);
	/* Visible now. */
	assert_states(f.h, p, 0, 4, UHMM_STATE_DEVICE, b);
	assert_int_equal(ilog_resident((uintptr_t)page_at(p, 1)), 0);

	/* System → A itself: reported too, page still in system memory. */
	f.l->watch[0] = (uintptr_t)page_at(p, 8);
	from = atomic_load(&f.l->n);
	assert_migrate(f.h, page_at(p, 8), PS(), f.t->dev, 1, 0);
	i = ilog_find_from(f.l, from, UHMM_EVENT_MIGRATE, page_at(p, 8), page_at(p, 9));
	expect_found(f.l, i, "MIGRATE (to A)");
	pr = &f.l->e[i].p[0];
	assert_int_equal(pr->qrc, 0);
	assert_int_equal(pr->qi.state, UHMM_STATE_SYSTEM);
	assert_int_equal(pr->resident, 1);
	assert_int_equal(pr->word0, pat(6, 8, 0));
	assert_states(f.h, p, 8, 1, UHMM_STATE_DEVICE, f.t->dev);

	/* A → system, by device B reading the page: A still holds it while it
	 * is told (its device page still has the data). */
	size_t idx = dev_index(&f, page_at(p, 8));
	f.l->watch_host[0] = uhmm_devmem_host_addr(f.t->m, idx);
	assert_non_null(f.l->watch_host[0]);
	f.l->probe_rw = false;
	from = atomic_load(&f.l->n);
	seq = uhmm_mirror_read_begin(f.m);
	assert_int_equal(uhmm_dummy_read(b, page_at(p, 8), buf, 1, NULL), 0);
	assert_buf(buf, 8, 1, 6);
	i = ilog_find_from(f.l, from, UHMM_EVENT_MIGRATE, page_at(p, 8), page_at(p, 9));
	expect_found(f.l, i, "MIGRATE (A to system)");
	pr = &f.l->e[i].p[0];
	assert_int_equal(pr->qrc, 0);
	assert_int_equal(pr->qi.state, UHMM_STATE_DEVICE);
	assert_ptr_equal(pr->qi.device, f.t->dev);
	assert_int_equal(pr->resident, 0);
	assert_int_equal(pr->host_present, 1);
	assert_int_equal(pr->host_word0, pat(6, 8, 0));
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 1);
	/* Brought back through system memory. */
	assert_states(f.h, p, 8, 1, UHMM_STATE_SYSTEM, NULL);

	assert_pages(p, 0, N, 6);
	free(buf);
	fx_close(&f);
}

/*
 * ---- uhmm_range_remove → RANGE_REMOVE ----
 * Device pages come home first (MIGRATE, told while still on the device),
 * then RANGE_REMOVE while the range is still managed.
 */
static void inval_range_remove(void **state)
{
	struct fixture f;
	fx_open(state, &f, true);
	void *p = t_alloc(f.h, N);
	fill_pages(p, 0, N, 7);
	dev_map(&f, p, N);
	assert_migrate(f.h, page_at(p, 1), PS(), f.t->dev, 1, 0);
	tdev_reset_counts(f.t);
	f.l->watch[0] = (uintptr_t)p;
	f.l->watch[1] = (uintptr_t)page_at(p, 1);

	unsigned from = atomic_load(&f.l->n);
	uint64_t seq = uhmm_mirror_read_begin(f.m);
	assert_int_equal(uhmm_range_remove(f.h, p, N * PS()), 0);
	int im = ilog_find_from(f.l, from, UHMM_EVENT_MIGRATE, page_at(p, 1), page_at(p, 2));
	expect_found(f.l, im, "MIGRATE (home before removal)");
	assert_int_equal(f.l->e[im].p[1].qrc, 0);
	assert_int_equal(f.l->e[im].p[1].qi.state, UHMM_STATE_DEVICE);
	assert_ptr_equal(f.l->e[im].p[1].qi.device, f.t->dev);
	int i = ilog_find_exact(f.l, from, UHMM_EVENT_RANGE_REMOVE, p, page_at(p, N));
	expect_found(f.l, i, "RANGE_REMOVE");
	assert_true(i > im);
	/* Still managed inside the callback. */
	assert_int_equal(f.l->e[i].p[0].qrc, 0);
	assert_int_equal(f.l->e[i].p[0].qi.state, UHMM_STATE_SYSTEM);
	assert_int_equal(f.l->e[i].p[0].resident, 1);
	assert_int_equal(f.l->e[i].p[1].qrc, 0);
	assert_int_equal(f.l->e[i].p[1].qi.state, UHMM_STATE_SYSTEM);
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 1);
	/* Visible now: unmanaged, data kept, device page freed. */
	struct uhmm_page_info qi;
	assert_int_equal(uhmm_query(f.h, p, 1, &qi), -ENOENT);
	assert_freed_once(f.t, 1);
	assert_int_equal(uhmm_devmem_used(f.t->m), 0);
	assert_pages(p, 0, N, 7);
	assert_int_equal(munmap(p, N * PS()), 0);
	fx_close(&f);
}

/*
 * ---- uhmm_free → UNMAP ----
 * Told while the memory is still managed and mapped, a device page still on
 * the device.
 */
static void inval_free(void **state)
{
	struct fixture f;
	fx_open(state, &f, true);
	void *p = t_alloc(f.h, N);
	fill_pages(p, 0, N, 8);
	dev_map(&f, p, N);
	assert_migrate(f.h, page_at(p, 1), PS(), f.t->dev, 1, 0);
	size_t idx = dev_index(&f, page_at(p, 1));
	tdev_reset_counts(f.t);
	f.l->watch[0] = (uintptr_t)p;
	f.l->watch[1] = (uintptr_t)page_at(p, 1);
	f.l->watch_host[1] = uhmm_devmem_host_addr(f.t->m, idx);
	f.l->probe_rw = true;

	unsigned from = atomic_load(&f.l->n);
	uint64_t seq = uhmm_mirror_read_begin(f.m);
	assert_int_equal(uhmm_free(f.h, p, N * PS()), 0);
	int i = ilog_find_exact(f.l, from, UHMM_EVENT_UNMAP, p, page_at(p, N));
	expect_found(f.l, i, "UNMAP");
	struct ilog_probe *p0 = &f.l->e[i].p[0], *p1 = &f.l->e[i].p[1];
	assert_int_equal(p0->qrc, 0);
	assert_int_equal(p0->qi.state, UHMM_STATE_SYSTEM);
	assert_int_equal(p0->resident, 1);
	assert_int_equal(p0->readable, 1);
	assert_int_equal(p0->word0, pat(8, 0, 0));
	assert_int_equal(p1->qrc, 0);
	assert_int_equal(p1->qi.state, UHMM_STATE_DEVICE);
	assert_ptr_equal(p1->qi.device, f.t->dev);
	assert_int_equal(p1->host_present, 1);
	assert_int_equal(p1->host_word0, pat(8, 1, 0));
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 1);
	/* Visible now: gone, device page freed by the time uhmm_free returned. */
	struct uhmm_page_info qi;
	assert_int_equal(uhmm_query(f.h, p, 1, &qi), -ENOENT);
	assert_int_equal(ilog_resident((uintptr_t)p), -ENOMEM);
	assert_freed_once(f.t, 1);
	assert_int_equal(uhmm_devmem_used(f.t->m), 0);
	fx_close(&f);
}

static int pv_read(const void *a, uint64_t *w)
{
	struct iovec lo = { w, sizeof(*w) }, re = { (void *)a, sizeof(*w) };
	return process_vm_readv(getpid(), &lo, 1, &re, 1, 0) == (ssize_t)sizeof(*w);
}

static int pv_write(void *a, uint64_t w)
{
	struct iovec lo = { &w, sizeof(w) }, re = { a, sizeof(w) };
	return process_vm_writev(getpid(), &lo, 1, &re, 1, 0) == (ssize_t)sizeof(w);
}

/*
 * ---- uhmm_mprotect → PROTECT ----
 * Told while the old protection still holds (the page is still writable,
 * then still readable), for exactly the range.  The device then sees the
 * new protection.
 */
static void inval_mprotect(void **state)
{
	struct fixture f;
	fx_open(state, &f, true);
	struct uhmm_device *d = t_dummy(f.h);
	void *p = t_alloc(f.h, N);
	void *buf = malloc(PS());
	struct uhmm_range_entry e[4];
	assert_non_null(buf);
	fill_pages(p, 0, N, 9);
	dev_map(&f, p, N);
	assert_migrate(f.h, page_at(p, 5), PS(), f.t->dev, 1, 0);
	f.l->watch[0] = (uintptr_t)page_at(p, 4);
	f.l->probe_rw = true;

	/* RW → RO */
	unsigned from = atomic_load(&f.l->n);
	uint64_t seq = uhmm_mirror_read_begin(f.m);
	assert_int_equal(uhmm_mprotect(f.h, page_at(p, 4), 4 * PS(), PROT_READ), 0);
	int i = ilog_find_exact(f.l, from, UHMM_EVENT_PROTECT, page_at(p, 4), page_at(p, 8));
	expect_found(f.l, i, "PROTECT (read-only)");
	assert_int_equal(f.l->e[i].p[0].resident, 1);
	assert_int_equal(f.l->e[i].p[0].readable, 1);
	assert_int_equal(f.l->e[i].p[0].writable, 1); /* old protection */
	assert_int_equal(f.l->e[i].p[0].word0, pat(9, 4, 0));
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 1);
	uint64_t w = 0;
	assert_true(pv_read(page_at(p, 4), &w));
	assert_false(pv_write(page_at(p, 4), w));
	/* The device sees it: write -EPERM, read fine; the device page stays. */
	assert_int_equal(uhmm_range_fault(f.m, page_at(p, 4), 4, UHMM_RANGE_WRITE, e), -EPERM);
	assert_int_equal(uhmm_range_fault(f.m, page_at(p, 4), 4, UHMM_RANGE_READ, e), 0);
	assert_false(e[0].flags & UHMM_ENTRY_WRITE);
	assert_true(e[1].flags & UHMM_ENTRY_DEVICE_LOCAL);
	assert_false(e[1].flags & UHMM_ENTRY_WRITE);
	fill_buf(buf, 6, 1, 10);
	assert_int_equal(uhmm_dummy_write(d, page_at(p, 6), buf, 1, NULL), -EPERM);
	assert_int_equal(uhmm_dummy_read(d, page_at(p, 6), buf, 1, NULL), 0);
	assert_buf(buf, 6, 1, 9);
	assert_states(f.h, p, 5, 1, UHMM_STATE_DEVICE, f.t->dev);

	/* RO → NONE */
	from = atomic_load(&f.l->n);
	assert_int_equal(uhmm_mprotect(f.h, page_at(p, 4), 4 * PS(), PROT_NONE), 0);
	i = ilog_find_exact(f.l, from, UHMM_EVENT_PROTECT, page_at(p, 4), page_at(p, 8));
	expect_found(f.l, i, "PROTECT (none)");
	assert_int_equal(f.l->e[i].p[0].readable, 1); /* old protection */
	assert_int_equal(f.l->e[i].p[0].writable, 0);
	assert_false(pv_read(page_at(p, 4), &w));
	assert_int_equal(uhmm_range_fault(f.m, page_at(p, 4), 1, UHMM_RANGE_READ, e), -EFAULT);
	assert_int_equal(uhmm_dummy_read(d, page_at(p, 6), buf, 1, NULL), -EFAULT);

	/* NONE → RW: everything as before. */
	assert_int_equal(uhmm_mprotect(f.h, page_at(p, 4), 4 * PS(), PROT_READ | PROT_WRITE), 0);
	fill_buf(buf, 6, 1, 10);
	assert_int_equal(uhmm_dummy_write(d, page_at(p, 6), buf, 1, NULL), 0);
	assert_pages(p, 6, 1, 10);
	assert_pages(p, 0, 6, 9);
	assert_pages(p, 7, N - 7, 9);
	free(buf);
	fx_close(&f);
}

/*
 * ---- the retry protocol ----
 * A device snapshots, an invalidation happens, read_retry says so; a fresh
 * read_begin gives a clean sequence whose entries show the change.  A stale
 * sequence stays stale (a loop that does not re-read it would spin).
 */
static void retry_protocol(void **state)
{
	struct fixture f;
	fx_open(state, &f, true);
	struct uhmm_device *b = t_dummy(f.h);
	void *p = t_alloc(f.h, N);
	struct uhmm_range_entry e[N];
	fill_pages(p, 0, N, 11);

	uint64_t seq = uhmm_mirror_read_begin(f.m);
	assert_int_equal(uhmm_range_fault(f.m, p, N, UHMM_RANGE_SNAPSHOT, e), 0);
	assert_true(e[2].flags & UHMM_ENTRY_VALID);
	/* Snapshots and faults by this device do not move its own sequence. */
	assert_int_equal(uhmm_range_fault(f.m, p, N, UHMM_RANGE_READ, e), 0);
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 0);

	/* Another device takes page 2: the entries just read are stale. */
	assert_migrate(f.h, page_at(p, 2), PS(), b, 1, 0);
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 1);
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 1); /* stays stale */
	uint64_t seq2 = uhmm_mirror_read_begin(f.m);
	assert_true(seq2 != seq);
	assert_int_equal(uhmm_range_fault(f.m, p, N, UHMM_RANGE_SNAPSHOT, e), 0);
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq2), 0);
	assert_true(e[2].flags & UHMM_ENTRY_DEVICE_REMOTE);
	assert_false(e[2].flags & UHMM_ENTRY_VALID);

	/* A device fault that brings B's page home is this device's own doing:
	 * not reported back, the sequence stays clean. */
	assert_int_equal(uhmm_range_fault(f.m, p, N, UHMM_RANGE_READ, e), 0);
	assert_true(e[2].flags & UHMM_ENTRY_VALID);
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq2), 0);

	/* A kernel-reported change moves the sequence too (bounded wait). */
	uint64_t seq3 = uhmm_mirror_read_begin(f.m);
	assert_int_equal(madvise(page_at(p, 3), PS(), MADV_DONTNEED), 0);
	for (int k = 0; k < 5000 && !uhmm_mirror_read_retry(f.m, seq3); k++)
		ms_sleep(1);
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq3), 1);

	/* The full loop under a stream of invalidations from another thread
	 * converges when the sequence is re-read each time. */
	seq = uhmm_mirror_read_begin(f.m);
	assert_int_equal(uhmm_mirror_read_retry(f.m, seq), 0);
	unsigned tries = 0;
	for (;;) {
		tries++;
		uint64_t s = uhmm_mirror_read_begin(f.m);
		assert_int_equal(uhmm_range_fault(f.m, p, N, UHMM_RANGE_READ, e), 0);
		if (tries < 3) /* an invalidation lands between fault and check */
			assert_int_equal(uhmm_mprotect(f.h, page_at(p, 9), PS(),
			                               PROT_READ | PROT_WRITE), 0);
		if (!uhmm_mirror_read_retry(f.m, s))
			break;
		assert_true(tries < 100);
	}
	assert_int_equal(tries, 3);
	assert_true(e[3].flags & UHMM_ENTRY_ZERO);
	assert_pages(p, 0, 3, 11);
	assert_zero_pages(p, 3, 1);
	assert_pages(p, 4, N - 4, 11);
	fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(inval_munmap),
		TEST_BOTH(inval_madvise_dontneed),
		TEST_BOTH(inval_madvise_free),
		TEST_BOTH(inval_mremap),
		TEST_BOTH(inval_migrate),
		TEST_BOTH(inval_range_remove),
		TEST_BOTH(inval_free),
		TEST_BOTH(inval_mprotect),
		TEST_BOTH(retry_protocol),
	};
	return cmocka_run_group_tests_name("hmm_invalidate", tests, NULL, NULL);
}
