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
static void granule(struct uhmm *h, const struct range_ent *r, uintptr_t page,
                    uintptr_t *lo, uintptr_t *hi)
{
	size_t g = h->fault_around;
	if (g > 1 && page == atomic_load_explicit(&h->ra_next, memory_order_relaxed)) {
		g = MIN((size_t)BATCH_PAGES,
		        2 * (size_t)atomic_load_explicit(&h->ra_pages, memory_order_relaxed));
		*lo = page;
		*hi = MIN(page + g * PAGE_SIZE, r->end);
	} else {
		size_t bytes = g * PAGE_SIZE;
		*lo = MAX(page & ~(bytes - 1), r->start);
		*hi = MIN((page & ~(bytes - 1)) + bytes, r->end);
	}
	if (h->fault_around > 1) {
		atomic_store_explicit(&h->ra_pages, (unsigned)g, memory_order_relaxed);
		atomic_store_explicit(&h->ra_next, *hi, memory_order_relaxed);
	}
}

static int fault_none(struct uhmm *h, const struct range_ent *r, uintptr_t page,
                      _Atomic uint64_t *e, uint64_t v, unsigned flags)
{
	uintptr_t lo, hi;
	granule(h, r, page, &lo, &hi);
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
	bool write = flags & FAULT_WRITE;
	size_t n = (last - first) / PAGE_SIZE;
	int rc = populate_zero(h, first, n, write);
	uint64_t nv = UHMM_STATE_SYSTEM | (write ? 0 : PTE_ZERO);
	for (uintptr_t a = first; a < last; a += PAGE_SIZE) {
		size_t i = (a - lo) / PAGE_SIZE;
		/* On failure nothing is known to be mapped: stay NONE. */
		page_unlock(h, ents[i], rc ? olds[i] : nv);
	}
	if (rc)
		return rc == -ENOMEM ? -EAGAIN : -EFAULT;
	stat_add(h, ST_CPU_FAULTS, 1);
	wake_range(h, first, last - first);
	return 0;
}

static int fault_device(struct uhmm *h, const struct range_ent *r, uintptr_t page,
                        _Atomic uint64_t *e, uint64_t v)
{
	uintptr_t lo, hi;
	granule(h, r, page, &lo, &hi);
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
	for (size_t i = 0; i < n; i++)
		mpage_unlock(h, &p[i]);
	if (rc)
		return -EFAULT; /* the device could not give it back: SIGBUS, data stays */
	wake_range(h, lo, hi - lo);
	return 0;
}

int fault_resolve(struct uhmm *h, const struct range_ent *r, uintptr_t addr, unsigned flags)
{
	uintptr_t page = addr & ~PAGE_MASK;
	_Atomic uint64_t *e = ptable_entry(&h->pt, page, true);
	if (!e)
		return -EAGAIN;
	uint64_t v;
	int rc = lock_fault_page(h, e, flags, &v);
	if (rc)
		return rc;
	switch (pte_state(v)) {
	case UHMM_STATE_NONE:
		return fault_none(h, r, page, e, v, flags);
	case UHMM_STATE_DEVICE:
		return fault_device(h, r, page, e, v);
	case UHMM_STATE_POISONED:
		page_unlock(h, e, v);
		return -EFAULT;
	case UHMM_STATE_DEVICE_COHERENT:
		/* Mapped in place; the fault raced a granule's move (now done). */
		page_unlock(h, e, v);
		wake_range(h, page, PAGE_SIZE);
		return 0;
	default:
		break;
	}
	/* SYSTEM: discarded without an event reaching us yet (zero-fill), or
	 * still write-protected by a migration that has since failed or a
	 * wake-up that was lost.  Either way make it accessible. */
	size_t done;
	rc = uffd_zeropage(h->uffd, page, PAGE_SIZE, &done);
	if (rc == -EEXIST) {
		if (h->use_wp)
			uffd_wp(h->uffd, page, PAGE_SIZE, false);
		rc = 0;
	} else if (!rc) {
		v |= PTE_ZERO;
	}
	page_unlock(h, e, v);
	wake_range(h, page, PAGE_SIZE);
	return rc ? -EAGAIN : 0;
}
