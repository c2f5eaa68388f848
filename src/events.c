/* SPDX-License-Identifier: MIT */
/*
 * CPU-side changes the kernel reports (the mmu_notifier analogue), handled
 * on the service thread, which must not block: pages busy in a migration
 * are marked DISCARD and their lock holder applies it when it unlocks.
 */
#include "internal.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>

struct discard_arg {
	struct uhmm *h;
	enum uhmm_event ev;
};

static int discard_one(uintptr_t addr, _Atomic uint64_t *e, void *arg)
{
	struct discard_arg *da = arg;
	(void)addr;
	for (;;) {
		uint64_t v = atomic_load(e);
		if (v == 0)
			return 0;
		if (v & PTE_BUSY) {
			if (atomic_compare_exchange_weak(e, &v, v | PTE_DISCARD))
				return 0;
			continue;
		}
		uint64_t old;
		if (!pte_trylock(e, &old))
			continue;
		if (pte_state(old) == UHMM_STATE_DEVICE_COHERENT && da->ev == UHMM_EVENT_DISCARD) {
			/* madvise on coherent memory (a shared mapping of device
			 * memory) leaves its data in place.  Zeroing it here would
			 * race the application: madvise returns once this event is
			 * read, and a write right after would be wiped.  Documented:
			 * coherent pages keep their data through MADV_DONTNEED. */
			page_unlock(da->h, e, old);
			return 0;
		}
		if (pte_state(old) == UHMM_STATE_DEVICE || pte_state(old) == UHMM_STATE_DEVICE_COHERENT)
			dpage_put(pte_dpage(old));
		page_unlock(da->h, e, UHMM_STATE_NONE);
		return 0;
	}
}

void discard_range(struct uhmm *h, uintptr_t start, uintptr_t end, enum uhmm_event ev)
{
	mirror_invalidate(h, start, end, ev, NULL);
	struct discard_arg da = { h, ev };
	ptable_walk(&h->pt, start, end, discard_one, &da);
}

struct remap_arg {
	struct uhmm *h;
	uintptr_t from, to;
};

static int remap_one(uintptr_t addr, _Atomic uint64_t *e, void *arg)
{
	struct remap_arg *ra = arg;
	struct uhmm *h = ra->h;
	if (atomic_load(e) == 0)
		return 0;
	uint64_t v;
	/* A migration holding the page finishes quickly unless it waits for
	 * us (its own discard event): bounded, then the page is left behind
	 * as NONE at its old address (counted as skipped). */
	int tries = 0;
	while (!pte_trylock(e, &v)) {
		if (++tries > 10000) {
			stat_add(h, ST_SKIPPED, 1);
			return 0;
		}
		sched_yield();
	}
	uintptr_t na = ra->to + (addr - ra->from);
	_Atomic uint64_t *ne = ptable_entry(&h->pt, na, true);
	if (!ne) {
		page_unlock(h, e, v);
		return 0;
	}
	uint64_t nold = pte_lock(ne);
	if (pte_state(nold) == UHMM_STATE_DEVICE || pte_state(nold) == UHMM_STATE_DEVICE_COHERENT)
		dpage_put(pte_dpage(nold));
	if (pte_state(v) == UHMM_STATE_DEVICE || pte_state(v) == UHMM_STATE_DEVICE_COHERENT)
		dpage_set_vaddr(pte_dpage(v), na);
	page_unlock(h, ne, v);
	page_unlock(h, e, UHMM_STATE_NONE);
	return 0;
}

void remap_range(struct uhmm *h, uintptr_t from, uintptr_t to, size_t len)
{
	mirror_invalidate(h, from, from + len, UHMM_EVENT_REMAP, NULL);
	struct remap_arg ra = { h, from, to };
	ptable_walk(&h->pt, from, from + len, remap_one, &ra);
	/* MREMAP_DONTUNMAP leaves the old range mapped (empty, still ours). */
	struct vma_info v;
	bool still = maps_query(from, from + len, &v, 1) > 0;
	range_move(h, from, to, len, still);
}
