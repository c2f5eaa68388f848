/* SPDX-License-Identifier: MIT */
/*
 * CPU fault resolution, shared by the service thread and the SIGBUS
 * handler.  A fault on a managed page means it is not mapped: never
 * populated (zero-fill), in device memory (bring it home), poisoned
 * (SIGBUS), or in system memory but discarded behind our back (zero-fill;
 * or merely write-protected by a migration that has since finished).
 *
 * Fault-around: the aligned granule of h->fault_around pages around the
 * fault is resolved in the same kernel call where neighbours are in the
 * same state and not busy (trylock only: the faulting page is the only one
 * ever waited for, so two resolvers cannot deadlock).
 */
#include "internal.h"
#include "probes.h"

#include <string.h>

static int lock_fault_page(struct uhmm *h, _Atomic uint64_t *e, unsigned flags, uint64_t *v)
{
	if (flags & FAULT_SERVICE) {
		if (!pte_trylock(e, v)) {
			pte_note_waiter(h, e);
			return -EAGAIN;
		}
		return 0;
	}
	*v = pte_lock(e);
	return 0;
}

/*
 * Granule [lo, hi) around page, clipped to the range.  Like readahead, a
 * fault right after the previous granule is taken as a sequential stream:
 * the granule doubles (up to BATCH_PAGES, one 2 MiB kernel call) and
 * starts at the faulting page.  Anything else falls back to the aligned
 * default granule.  The stream state is a hint shared by all threads.
 */
/*
 * The stream state of the faulting thread: in SIGBUS mode the thread's own
 * (initial-exec TLS: safe in a signal handler); in THREAD mode a small
 * table on the context keyed by the faulting thread's id, touched only by
 * the service thread.  Two threads streaming through memory then do not
 * reset each other's granule.
 */
static __thread struct ra_state tls_ra __attribute__((tls_model("initial-exec")));

static struct ra_state *ra_for(struct uhmm *h, uint32_t tid)
{
	struct ra_state *s;
	if (!tid) {
		s = &tls_ra;
	} else {
		s = &h->ra_tab[(tid * 2654435761u) >> 28 & (RA_SLOTS - 1)];
		if (s->tid != tid)
			*s = (struct ra_state){ .tid = tid };
	}
	if (s->h != h)
		*s = (struct ra_state){ .h = h, .tid = tid };
	return s;
}

static void granule(struct uhmm *h, const struct range_ent *r, uintptr_t page, uint32_t tid,
                    uintptr_t *lo, uintptr_t *hi)
{
	size_t g = h->fault_around;
	struct ra_state *s = ra_for(h, tid);
	/* A fault inside what fault-ahead was asked for continues the stream
	 * too: the workers got there first, or are on it. */
	bool ahead = page > s->next && page <= s->ahead;
	if (g > 1 && (page == s->next || ahead)) {
		g = ahead ? BATCH_PAGES : MIN((size_t)BATCH_PAGES, 2 * (size_t)s->pages);
		*lo = page;
		*hi = MIN(page + g * PAGE_SIZE, r->end);
	} else {
		size_t bytes = g * PAGE_SIZE;
		*lo = MAX(page & ~(bytes - 1), r->start);
		*hi = MIN((page & ~(bytes - 1)) + bytes, r->end);
		s->ahead = 0;
	}
	if (h->fault_around > 1) {
		s->pages = (unsigned)g;
		s->next = *hi;
	}
}

/*
 * Fault-ahead: a stream at full granule asks the workers for the next
 * h->ahead.granules granules (ahead.c), keeping that much queued ahead of
 * the thread, one request per granule so that the workers share them.
 * Queued before the thread resolves its own granule: both proceed at once.
 * Async-signal-safe.
 */
static void fault_ahead(struct uhmm *h, const struct range_ent *r, uint32_t tid, uintptr_t lo,
                        uintptr_t hi)
{
	const uintptr_t G = (uintptr_t)BATCH_PAGES * PAGE_SIZE;
	if (!h->ahead.granules || hi - lo < G)
		return;
	struct ra_state *s = ra_for(h, tid);
	uintptr_t to = MIN(r->end, hi + (uintptr_t)h->ahead.granules * G);
	for (uintptr_t from = MAX(hi, s->ahead); from < to; from += G) {
		if (!ahead_queue(h, from, MIN(from + G, to)))
			break;
		s->ahead = MIN(from + G, to);
	}
}

/* Zero-fill [s0, s1) and note which pages got mapped (index from lo). */
static void populate_run(struct uhmm *h, uintptr_t lo, uintptr_t s0, uintptr_t s1, bool write,
                         bool *mapped, int *rc)
{
	if (s0 >= s1)
		return;
	size_t done;
	int r = populate_zero(h, s0, (s1 - s0) / PAGE_SIZE, write, &done);
	for (size_t i = 0; i < done; i++)
		mapped[(s0 - lo) / PAGE_SIZE + i] = true;
	if (r && !*rc)
		*rc = r;
}

static int fault_none(struct uhmm *h, const struct range_ent *r, uintptr_t page,
                      _Atomic uint64_t *e, uint64_t v, unsigned flags, uint32_t tid,
                      size_t *pages)
{
	uintptr_t lo, hi;
	granule(h, r, page, tid, &lo, &hi);
	_Atomic uint64_t *ents[BATCH_PAGES];
	uint64_t olds[BATCH_PAGES];
	/* Extend down then up from the faulting page while neighbours are
	 * free and never populated. */
	uintptr_t first = page, last = page + PAGE_SIZE;
	size_t base = (page - lo) / PAGE_SIZE;
	ents[base] = e;
	olds[base] = v;
	while (first > lo) {
		size_t i = (first - PAGE_SIZE - lo) / PAGE_SIZE;
		_Atomic uint64_t *ne = ptable_entry(&h->pt, first - PAGE_SIZE, true);
		uint64_t nv;
		if (!ne || atomic_load(ne) != 0 || !pte_trylock(ne, &nv))
			break;
		if (nv != 0) {
			page_unlock(h, ne, nv);
			break;
		}
		ents[i] = ne;
		olds[i] = nv;
		first -= PAGE_SIZE;
	}
	while (last < hi) {
		size_t i = (last - lo) / PAGE_SIZE;
		_Atomic uint64_t *ne = ptable_entry(&h->pt, last, true);
		uint64_t nv;
		if (!ne || atomic_load(ne) != 0 || !pte_trylock(ne, &nv))
			break;
		if (nv != 0) {
			page_unlock(h, ne, nv);
			break;
		}
		ents[i] = ne;
		olds[i] = nv;
		last += PAGE_SIZE;
	}
	/* Only the written page gets memory; its neighbours get the zero
	 * page (a later write to them is the kernel's own copy-on-write, no
	 * round trip to uhmm), so a write stream never over-commits. */
	bool write = flags & FAULT_WRITE;
	bool mapped[BATCH_PAGES];
	int rc = 0;
	memset(mapped, 0, sizeof(mapped));
	if (!write) {
		populate_run(h, lo, first, last, false, mapped, &rc);
	} else {
		populate_run(h, lo, first, page, false, mapped, &rc);
		populate_run(h, lo, page, page + PAGE_SIZE, true, mapped, &rc);
		populate_run(h, lo, page + PAGE_SIZE, last, false, mapped, &rc);
	}
	for (uintptr_t a = first; a < last; a += PAGE_SIZE) {
		size_t i = (a - lo) / PAGE_SIZE;
		uint64_t nv = UHMM_STATE_SYSTEM | (write && a == page ? 0 : PTE_ZERO);
		/* What is not known to be mapped stays NONE. */
		page_unlock(h, ents[i], mapped[i] ? nv : olds[i]);
		*pages += mapped[i];
	}
	if (!mapped[(page - lo) / PAGE_SIZE])
		/* EAGAIN: an event waits to be read (service thread): retry later. */
		return rc == -EAGAIN || rc == -ENOMEM ? -EAGAIN : -EFAULT;
	stat_add(h, ST_CPU_FAULTS, 1);
	wake_range(h, first, last - first);
	return 0;
}

static int fault_device(struct uhmm *h, const struct range_ent *r, uintptr_t page,
                        _Atomic uint64_t *e, uint64_t v, uint32_t tid, size_t *pages)
{
	uintptr_t lo, hi;
	granule(h, r, page, tid, &lo, &hi);
	fault_ahead(h, r, tid, lo, hi);
	struct mpage p[BATCH_PAGES];
	size_t n = 0, me = 0;
	for (uintptr_t a = lo; a < hi; a += PAGE_SIZE) {
		if (a == page) {
			me = n;
			p[n++] = (struct mpage){ .addr = a, .e = e, .old = v };
			continue;
		}
		_Atomic uint64_t *ne = ptable_entry(&h->pt, a, false);
		uint64_t nv;
		if (!ne || pte_state(atomic_load(ne)) != UHMM_STATE_DEVICE || !pte_trylock(ne, &nv))
			continue;
		if (pte_state(nv) != UHMM_STATE_DEVICE) {
			page_unlock(h, ne, nv);
			continue;
		}
		p[n++] = (struct mpage){ .addr = a, .e = ne, .old = nv };
	}
	migrate_to_system(h, p, n, NULL);
	int rc = p[me].err;
	if (!rc)
		stat_add(h, ST_CPU_FAULTS, 1);
	for (size_t i = 0; i < n; i++) {
		*pages += !p[i].err;
		mpage_unlock(h, &p[i]);
	}
	if (rc == -EAGAIN)
		return -EAGAIN; /* an event waits to be read first */
	if (rc)
		return -EFAULT; /* the device could not give it back: SIGBUS, data stays */
	wake_range(h, lo, hi - lo);
	return 0;
}

static int resolve_locked(struct uhmm *h, const struct range_ent *r, uintptr_t page,
                          _Atomic uint64_t *e, uint64_t v, unsigned flags, uint32_t tid,
                          size_t *pages);

/* r: the range the caller found addr in (looked up again under the gate). */
int fault_resolve(struct uhmm *h, const struct range_ent *r, uintptr_t addr, unsigned flags,
                  uint32_t tid)
{
	(void)r;
	/* Read only while a tracer is attached (the probe's semaphore). */
	uint64_t t0 = UHMM_PROBE_ENABLED(cpu_fault) ? uhmm_probe_now_ns() : 0;
	size_t pages = 0;
	uintptr_t page = addr & ~PAGE_MASK;
	_Atomic uint64_t *e = ptable_entry(&h->pt, page, true);
	if (!e)
		return -EAGAIN;
	uint64_t v;
	int rc = lock_fault_page(h, e, flags, &v);
	if (rc)
		return rc;
	/* The service thread holds the gate closed itself; a faulting thread
	 * (SIGBUS mode) enters it and checks that the page is still what it
	 * looked up: an event may have changed it before the gate closed. */
	bool entered = gate_enter(h);
	struct range_ent now;
	unsigned tok = ebr_enter();
	bool same = !(atomic_load(e) & PTE_MARKS) && range_lookup_managed(h, page, &now);
	ebr_exit(tok);
	if (!same) {
		page_unlock(h, e, v);
		gate_exit(h, entered);
		return -EAGAIN; /* the caller looks the address up again */
	}
	rc = resolve_locked(h, &now, page, e, v, flags, tid, &pages);
	gate_exit(h, entered);
	PTRACE(FAULT, e, page, 0, v, rc);
	if (t0) /* not when the tracer attached since t0 */
		UHMM_PROBE(cpu_fault, addr, (int)h->mode, pages, uhmm_probe_now_ns() - t0, rc);
	return rc;
}

/* *pages: how many pages this made accessible (the cpu_fault probe). */
static int resolve_locked(struct uhmm *h, const struct range_ent *r, uintptr_t page,
                          _Atomic uint64_t *e, uint64_t v, unsigned flags, uint32_t tid,
                          size_t *pages)
{
	int rc;
	switch (pte_state(v)) {
	case UHMM_STATE_NONE:
		return fault_none(h, r, page, e, v, flags, tid, pages);
	case UHMM_STATE_DEVICE:
		return fault_device(h, r, page, e, v, tid, pages);
	case UHMM_STATE_POISONED:
		page_unlock(h, e, v);
		return -EFAULT;
	case UHMM_STATE_DEVICE_COHERENT:
		/* Mapped in place; the fault raced a granule's move (now done). */
		page_unlock(h, e, v);
		wake_range(h, page, PAGE_SIZE);
		*pages = 1;
		return 0;
	default:
		break;
	}
	/* SYSTEM: discarded without an event reaching us yet (zero-fill), or
	 * still write-protected by a migration that has since failed or a
	 * wake-up that was lost.  Either way make it accessible. */
	size_t done;
	rc = uffd_zeropage(h->uffd, page, PAGE_SIZE, &done);
	if (rc == -EAGAIN) {
		page_unlock(h, e, v);
		return -EAGAIN;
	}
	if (rc == -EEXIST) {
		if (h->use_wp)
			uffd_wp(h->uffd, page, PAGE_SIZE, false);
		rc = 0;
	} else if (!rc) {
		v |= PTE_ZERO;
	}
	page_unlock(h, e, v);
	wake_range(h, page, PAGE_SIZE);
	*pages = !rc;
	return rc ? -EAGAIN : 0;
}
