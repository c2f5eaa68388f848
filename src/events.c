/* SPDX-License-Identifier: MIT */
/*
 * CPU-side changes the kernel reports (the mmu_notifier analogue), handled
 * on the service thread, which must not block: pages busy in a migration
 * are marked DISCARD and their lock holder applies it when it unlocks.
 */
#include "internal.h"

#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

struct discard_arg {
	struct uhmm *h;
	enum uhmm_event ev;
	uintptr_t start;          /* current run of locked pages */
	size_t n;
	_Atomic uint64_t *e[BATCH_PAGES];
	uint64_t v[BATCH_PAGES];
};

/* Apply the discard to a run of locked pages: invalidate the mirrors with
 * the pages locked (so no device fault can map them again in between),
 * then drop their contents. */
static void discard_flush(struct discard_arg *da)
{
	if (!da->n)
		return;
	struct uhmm *h = da->h;
	mirror_invalidate(h, da->start, da->start + da->n * PAGE_SIZE, da->ev, NULL);
	for (size_t i = 0; i < da->n; i++) {
		uint64_t old = da->v[i];
		unsigned st = pte_state(old);
		if (st == UHMM_STATE_DEVICE_COHERENT && da->ev == UHMM_EVENT_DISCARD) {
			/* madvise on coherent memory (a shared mapping of device
			 * memory) leaves its data in place.  Zeroing it here would
			 * race the application: madvise returns once this event is
			 * read, and a write right after would be wiped.  Documented:
			 * coherent pages keep their data through MADV_DONTNEED. */
			page_unlock(h, da->e[i], old);
			continue;
		}
		if (st == UHMM_STATE_DEVICE || st == UHMM_STATE_DEVICE_COHERENT) {
			dpage_check(h, pte_dpage(old), da->start + i * PAGE_SIZE, "discard");
			dpage_put(pte_dpage(old));
		}
		page_unlock(h, da->e[i], UHMM_STATE_NONE);
	}
	da->n = 0;
}

static int discard_one(uintptr_t addr, _Atomic uint64_t *e, void *arg)
{
	struct discard_arg *da = arg;
	for (;;) {
		uint64_t v = atomic_load(e);
		if (v == 0)
			return 0;
		if (v & PTE_BUSY) {
			/* Its holder applies the discard when it unlocks. */
			uint64_t mark = PTE_DISCARD | (da->ev == UHMM_EVENT_UNMAP ? PTE_UNMAPPED : 0);
			if (atomic_compare_exchange_weak(e, &v, v | mark)) {
				PTRACE(MARK, e, addr, 0, v, mark);
				return 0;
			}
			continue;
		}
		uint64_t old;
		if (!pte_trylock(e, &old))
			continue;
		if (da->n && (da->n == BATCH_PAGES || addr != da->start + da->n * PAGE_SIZE))
			discard_flush(da);
		if (!da->n)
			da->start = addr;
		da->e[da->n] = e;
		da->v[da->n++] = old;
		return 0;
	}
}

void discard_range(struct uhmm *h, uintptr_t start, uintptr_t end, enum uhmm_event ev)
{
	/* Busy pages are invalidated now; their holders only unlock later. */
	mirror_invalidate(h, start, end, ev, NULL);
	PTRACE(DISCARD, 0, start, end - start, ev, 0);
	struct discard_arg *da = malloc(sizeof(*da));
	if (!da)
		return;
	da->h = h;
	da->ev = ev;
	da->n = 0;
	ptable_walk(&h->pt, start, end, discard_one, da);
	discard_flush(da);
	free(da);
}

struct remap_arg {
	struct uhmm *h;
	uintptr_t from, to;
};

/*
 * A page mremap moved whose entries are busy: the move completes when it
 * has both ends, whichever comes last.
 *   value: the page's entry value, from its old entry (at once, or from
 *          the unlocker of a BUSY old entry, which we mark PTE_REMAP);
 *   to:    the new address's entry, locked for us (at once, or handed
 *          over by the unlocker of a BUSY new entry — a holder that
 *          checked the memory that was at that address before — which we
 *          mark PTE_INSTALL).
 * Until then the new entry stays locked: nothing serves the new address
 * with a value that is still on its way.
 */
struct remap_pending {
	_Atomic uint64_t *from, *to;
	uintptr_t to_addr;
	uint64_t value, to_old;
	bool have_value, have_to;
	bool discarded; /* the old entry was marked DISCARD before the move */
	bool after_install; /* the old entry was already PTE_INSTALL: what moves
	                       on is the page moved in, not its holder's */
	struct remap_pending *next;
};

/* Move one entry's value to the new address's entry (held locked). */
static void remap_move(struct uhmm *h, _Atomic uint64_t *ne, uint64_t nold, uintptr_t na,
                       uint64_t v)
{
	if (pte_state(nold) == UHMM_STATE_DEVICE || pte_state(nold) == UHMM_STATE_DEVICE_COHERENT)
		dpage_put(pte_dpage(nold));
	if (pte_state(v) == UHMM_STATE_DEVICE || pte_state(v) == UHMM_STATE_DEVICE_COHERENT)
		dpage_set_vaddr(pte_dpage(v), na);
	PTRACE(REMAP_MOVE, ne, na, 0, v, nold);
	page_unlock(h, ne, v);
	wake_range(h, na, PAGE_SIZE);
}

/* With remap_lock held: the record, unlinked, if it has both ends. */
static struct remap_pending *remap_ready(struct uhmm *h, struct remap_pending *rp)
{
	if (!rp->have_value || !rp->have_to)
		return NULL;
	for (struct remap_pending **pp = &h->remaps; *pp; pp = &(*pp)->next) {
		if (*pp == rp) {
			*pp = rp->next;
			return rp;
		}
	}
	return NULL;
}

static void remap_complete(struct uhmm *h, struct remap_pending *rp)
{
	if (!rp)
		return;
	remap_move(h, rp->to, rp->to_old, rp->to_addr, rp->value);
	free(rp);
}

/* With remap_lock held: the oldest move from e still waiting for its value
 * (the list is newest first).  mremap can move e's address away, then
 * another page in, then that page away again while e stays held: the
 * first move takes the holder's value, the next one the page moved in
 * (page_unlock keeps PTE_REMAP for it). */
static struct remap_pending *remap_first_from(struct uhmm *h, _Atomic uint64_t *e)
{
	struct remap_pending *first = NULL;
	for (struct remap_pending *rp = h->remaps; rp; rp = rp->next)
		if (rp->from == e && !rp->have_value)
			first = rp;
	return first;
}

/* The old entry's value is known (its holder unlocked, or we locked it). */
void remap_finish(struct uhmm *h, _Atomic uint64_t *e, uint64_t value)
{
	struct remap_pending *done = NULL;
	PTRACE(REMAP_FINISH, e, 0, 0, value, 0);
	pthread_mutex_lock(&h->remap_lock);
	struct remap_pending *rp = remap_first_from(h, e);
	if (rp) {
		unsigned st = pte_state(value);
		if (rp->discarded && (st == UHMM_STATE_DEVICE || st == UHMM_STATE_DEVICE_COHERENT)) {
			/* Discarded before it moved: as page_unlock would. */
			dpage_put(pte_dpage(value));
			value = UHMM_STATE_NONE;
		}
		rp->value = value;
		rp->have_value = true;
		done = remap_ready(h, rp);
	}
	pthread_mutex_unlock(&h->remap_lock);
	remap_complete(h, done);
}

/*
 * Where the page of the (busy) entry e ends up once its pending move
 * lands; false if none.  mremap may move the page on before it lands: the
 * new address's entry stays held for the move, so a second mremap of that
 * address (back over e's own address, or anywhere) records a move from it,
 * made after the first, which takes the value on (see remap_finish).  Such
 * a chain is followed to its end.  With remap_lock held, the list is newest
 * first.
 */
static struct remap_pending *remap_next_hop(struct uhmm *h, struct remap_pending *rp)
{
	struct remap_pending *next = NULL;
	/* The oldest record from rp's destination made after rp (before it
	 * in the list). */
	for (struct remap_pending *q = h->remaps; q && q != rp; q = q->next)
		if (q->from == rp->to && !q->have_value)
			next = q;
	return next;
}

bool remap_dest(struct uhmm *h, _Atomic uint64_t *e, uintptr_t *to, bool *discarded)
{
	bool found = false, disc = false;
	pthread_mutex_lock(&h->remap_lock);
	struct remap_pending *rp = remap_first_from(h, e);
	int hops = 0;
	for (; rp && hops < 64; hops++) {
		*to = rp->to_addr;
		found = true;
		/* A discard before a hop travels as its record's flag; one at
		 * the end is a mark on the destination entry. */
		disc |= rp->discarded;
		struct remap_pending *next = remap_next_hop(h, rp);
		if (!next)
			disc |= (atomic_load(rp->to) & PTE_DISCARD) != 0;
		rp = next;
	}
	pthread_mutex_unlock(&h->remap_lock);
	if (discarded)
		*discarded = disc;
	if (hops > 1) {
		TRACE(TR_REMAP_CHAIN, e, *to, hops, 0);
		if (unlikely(atomic_load_explicit(&g_trace_on, memory_order_relaxed)))
			fprintf(stderr, "uhmm: a held page moved by %d pending mremaps: its destination "
			        "is %#lx\n", hops, (unsigned long)*to);
	}
	return found;
}

/* The value a pending move brings to the (busy) entry ne, if one does:
 * the value known already, or what the source entry holds now (its holder
 * publishes the value when it unlocks).  That source entry may itself be
 * held for an earlier move to it (mremap moved the page on before it
 * landed there): then the value comes from that move's source, and so on
 * back (records older than rp follow it in the list).  For uhmm_query. */
bool remap_incoming(struct uhmm *h, _Atomic uint64_t *ne, uint64_t *v)
{
	pthread_mutex_lock(&h->remap_lock);
	struct remap_pending *rp = h->remaps;
	while (rp && rp->to != ne)
		rp = rp->next;
	bool found = rp != NULL;
	for (int hops = 0; rp && hops < 64; hops++) {
		if (rp->have_value) {
			*v = rp->value;
			break;
		}
		*v = atomic_load(rp->from);
		struct remap_pending *prev = NULL;
		if (*v & PTE_BUSY)
			for (prev = rp->next; prev && prev->to != rp->from; prev = prev->next)
				;
		rp = prev;
		if (rp)
			TRACE(TR_REMAP_CHAIN, ne, 0, hops + 2, 1);
		if (rp && unlikely(atomic_load_explicit(&g_trace_on, memory_order_relaxed)))
			fprintf(stderr, "uhmm: query of a page moved by %d pending mremaps\n", hops + 2);
	}
	pthread_mutex_unlock(&h->remap_lock);
	return found;
}

/*
 * The held entry e is let go of, holding *cur.  The moves mremap made from
 * and to its address while it was held are done in the order they were
 * made: a move away takes the value here (nothing is left), a move here
 * replaces it with the page it brings (what was here is dropped).  A move
 * here whose page has not arrived yet keeps e held: true, and when the
 * page arrives (remap_complete → remap_move → page_unlock) the rest is
 * done.  False when no move is left: *cur is what e holds, and its marks
 * but the ones set since the last move are cleared.
 */
bool remap_release(struct uhmm *h, _Atomic uint64_t *e, uint64_t *cur)
{
	for (;;) {
		struct remap_pending *next = NULL, *done = NULL;
		bool away = false;
		pthread_mutex_lock(&h->remap_lock);
		for (struct remap_pending *rp = h->remaps; rp; rp = rp->next) {
			/* The list is newest first: the last match is the oldest. */
			if (rp->from == e && !rp->have_value)
				next = rp, away = true;
			else if (rp->to == e && !rp->have_to)
				next = rp, away = false;
		}
		if (!next) {
			pthread_mutex_unlock(&h->remap_lock);
			uint64_t v = atomic_load(e);
			while (!atomic_compare_exchange_weak(e, &v, v & ~(PTE_REMAP | PTE_INSTALL)))
				;
			return false;
		}
		PTRACE(REMAP_FINISH, e, 0, away, *cur, 0);
		if (away) {
			uint64_t value = *cur;
			unsigned st = pte_state(value);
			if (next->discarded && (st == UHMM_STATE_DEVICE || st == UHMM_STATE_DEVICE_COHERENT)) {
				/* Discarded before it moved: as page_unlock would. */
				dpage_put(pte_dpage(value));
				value = UHMM_STATE_NONE;
			}
			next->value = value;
			next->have_value = true;
		} else {
			next->have_to = true;
			next->to_old = *cur; /* replaced: remap_move drops it */
		}
		*cur = UHMM_STATE_NONE;
		done = remap_ready(h, next);
		pthread_mutex_unlock(&h->remap_lock);
		if (!away) {
			/* Held for that move; when it lands here, page_unlock
			 * goes on from there. */
			remap_complete(h, done);
			return true;
		}
		remap_complete(h, done);
	}
}

static int remap_one(uintptr_t addr, _Atomic uint64_t *e, void *arg)
{
	struct remap_arg *ra = arg;
	struct uhmm *h = ra->h;
	if (atomic_load(e) == 0)
		return 0;
	uintptr_t na = ra->to + (addr - ra->from);
	_Atomic uint64_t *ne = ptable_entry(&h->pt, na, true);
	struct remap_pending *rp;
	if (!ne)
		return 0;
	while (!(rp = malloc(sizeof(*rp))))
		sched_yield();
	*rp = (struct remap_pending){ .from = e, .to = ne, .to_addr = na };
	pthread_mutex_lock(&h->remap_lock);
	rp->next = h->remaps;
	h->remaps = rp;
	pthread_mutex_unlock(&h->remap_lock);

	/* The new end.  A holder of the new entry checked whatever was mapped
	 * there before (its marks were about that memory: replaced). */
	for (;;) {
		uint64_t nold, cur = atomic_load(ne);
		if (pte_trylock(ne, &nold)) {
			pthread_mutex_lock(&h->remap_lock);
			rp->have_to = true;
			rp->to_old = nold;
			pthread_mutex_unlock(&h->remap_lock);
			break;
		}
		if ((cur & PTE_BUSY) &&
		    atomic_compare_exchange_weak(ne, &cur, (cur & ~(PTE_DISCARD | PTE_UNMAPPED)) | PTE_INSTALL)) {
			PTRACE(MARK, ne, na, 0, cur, PTE_INSTALL);
			break;
		}
	}
	/* The old end: never wait for its holder (a migration, which may
	 * itself wait for this thread); its unlocker finishes the move. */
	for (;;) {
		uint64_t v, cur = atomic_load(e);
		if (pte_trylock(e, &v)) {
			page_unlock(h, e, UHMM_STATE_NONE);
			remap_finish(h, e, v);
			break;
		}
		if (!(cur & PTE_BUSY))
			continue;
		/* Marks already there are about this page (they travel with the
		 * record); marks set later are about what is mapped here next. */
		pthread_mutex_lock(&h->remap_lock);
		bool ok = atomic_compare_exchange_weak(e, &cur, (cur & ~(PTE_DISCARD | PTE_UNMAPPED)) | PTE_REMAP);
		if (ok) {
			rp->discarded = cur & PTE_DISCARD;
			rp->after_install = cur & PTE_INSTALL;
		}
		pthread_mutex_unlock(&h->remap_lock);
		if (ok) {
			PTRACE(MARK, e, addr, 0, cur, PTE_REMAP);
			break;
		}
	}
	return 0;
}

/* Entries left at an mremap's destination described memory that mremap
 * replaced.  On the service thread: never wait for a holder; mark it. */
static int reset_dest_one(uintptr_t addr, _Atomic uint64_t *e, void *arg)
{
	struct uhmm *h = arg;
	(void)addr;
	PTRACE(RESET, e, addr, 0, atomic_load(e), 1);
	for (;;) {
		uint64_t old, v = atomic_load(e);
		if (v == 0)
			return 0;
		if (pte_trylock(e, &old)) {
			if (pte_state(old) == UHMM_STATE_DEVICE || pte_state(old) == UHMM_STATE_DEVICE_COHERENT)
				dpage_put(pte_dpage(old));
			page_unlock(h, e, 0);
			return 0;
		}
		if ((v & PTE_BUSY) && atomic_compare_exchange_weak(e, &v, v | PTE_DISCARD | PTE_UNMAPPED)) {
			PTRACE(MARK, e, addr, 0, v, PTE_DISCARD | PTE_UNMAPPED);
			return 0;
		}
	}
}

void range_reset_nowait(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	ptable_walk(&h->pt, start, end, reset_dest_one, h);
}

/*
 * Is the old range of a REMAP still registered here (MREMAP_DONTUNMAP
 * leaves it mapped, empty and still registered with our userfaultfd)?
 * Otherwise the addresses may already hold someone else's new mapping.
 * Removing write protection succeeds only on a range registered (for WP)
 * with this userfaultfd.  It fails with EAGAIN while another event is
 * queued (only this thread can read it): then the mapping's flags say
 * whether it is registered (no one else can register it while the
 * registry still holds it).  Registered may also mean that a newer
 * mapping was moved there already: the service thread tells the two
 * apart by the source's UNMAP (service.c, remap_source_unmapped).
 */
bool remap_source_registered(struct uhmm *h, uintptr_t from, size_t len)
{
	int r = h->use_wp ? uffd_wp(h->uffd, from, len, false) : -EAGAIN;
	return r != -EAGAIN ? r == 0 : vma_registered(from);
}

void remap_range(struct uhmm *h, uintptr_t from, uintptr_t to, size_t len, bool still)
{
	mirror_invalidate(h, from, from + len, UHMM_EVENT_REMAP, NULL);
	mirror_invalidate(h, to, to + len, UHMM_EVENT_REMAP, NULL);
	/* What the registry still holds at the destination has gone (the
	 * kernel moves only into free addresses).  The service thread waited
	 * for the event that freed it (remap_explain); anything still held
	 * had its UNMAP not come in that time: it is owed (owed.c).  Whatever
	 * the table said there described memory that is gone. */
	range_owed_occupied(h, to, to + len);
	ptable_walk(&h->pt, to, to + len, reset_dest_one, h);
	struct remap_arg ra = { h, from, to };
	ptable_walk(&h->pt, from, from + len, remap_one, &ra);
	PTRACE(EV_REMAP, 0, from, len, to, still);
	/* A move (not MREMAP_DONTUNMAP) raises the UNMAP of its source next;
	 * a newer mapping may be moved there before it is read. */
	if (!still)
		owed_add(h, from, from + len);
	range_move(h, from, to, len, still);
	/* The event carries the old length; a mapping mremap grew while it
	 * moved it is registered over its new length (range_discover). */
	range_discover(h, to, to + len);
}

/*
 * munmap: forget the range and drop its pages, except where the UNMAP is
 * one still due for a mapping that was there before the one there now
 * (owed.c: such an UNMAP can come after the REMAP that moved the newer
 * mapping in, and even after the one that moved it on).
 */
void unmap_range(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	uintptr_t at = start;
	while (at < end) {
		uintptr_t os, oe;
		bool owed = owed_take_next(h, at, end, &os, &oe);
		uintptr_t stop = owed ? os : end;
		if (stop > at) {
			PTRACE(UNMAP_PART, 0, at, stop - at, 0, 0);
			discard_range(h, at, stop, UHMM_EVENT_UNMAP);
			range_forget(h, at, stop);
		}
		if (!owed)
			break;
		at = oe;
	}
}
