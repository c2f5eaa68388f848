/* SPDX-License-Identifier: MIT */
/*
 * The page state table: a sparse radix tree of 64-bit entries keyed by
 * virtual page number, five levels of 512 slots (45-bit page numbers cover
 * 57-bit virtual addresses).  Interior nodes and leaves are 4 KiB; leaves
 * hold the entries themselves.  Nodes are carved from 2 MiB mmap'ed arenas
 * (the SIGBUS path may need a leaf, so no malloc) and live as long as the
 * table: lookups need no lock, installs use compare-and-swap.
 *
 * The entry lock (PTE_BUSY) sleeps on a futex on the entry's low 32 bits.
 */
#include "internal.h"

#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the entry futex uses the low 32 bits of a 64-bit word: little-endian only"
#endif

#define LEVEL_BITS 9
#define LEVELS     5
#define FANOUT     (1u << LEVEL_BITS)
#define NODE_SIZE  (FANOUT * sizeof(uint64_t))
#define ARENA_SIZE (2UL << 20)

void ptable_init(struct ptable *pt)
{
	memset(pt, 0, sizeof(*pt));
	pthread_mutex_init(&pt->arena_lock, NULL);
}

void ptable_destroy(struct ptable *pt)
{
	void *a = pt->arenas;
	while (a) {
		void *next = *(void **)a;
		munmap(a, ARENA_SIZE);
		a = next;
	}
	pt->arenas = NULL;
	pt->arena = NULL;
	atomic_store(&pt->root, NULL);
	pthread_mutex_destroy(&pt->arena_lock);
}

static void *node_alloc(struct ptable *pt)
{
	void *n = NULL;
	pthread_mutex_lock(&pt->arena_lock);
	if (!pt->arena || pt->arena_used + NODE_SIZE > ARENA_SIZE) {
		char *a = mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE,
		               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (a == MAP_FAILED)
			goto out;
		/* Tables are uhmm's own: a forked child must not share them. */
		madvise(a, ARENA_SIZE, MADV_DONTFORK);
		*(void **)a = pt->arenas; /* first node slot of each arena links arenas */
		pt->arenas = a;
		pt->arena = a;
		pt->arena_used = NODE_SIZE;
	}
	n = pt->arena + pt->arena_used;
	pt->arena_used += NODE_SIZE;
	pt->bytes += NODE_SIZE;
out:
	pthread_mutex_unlock(&pt->arena_lock);
	return n; /* fresh anonymous memory is zero */
}

static inline unsigned slot_of(uint64_t vpn, int level)
{
	return (unsigned)(vpn >> (LEVEL_BITS * (LEVELS - 1 - level))) & (FANOUT - 1);
}

static _Atomic(void *) *child_slot(void *node, unsigned i)
{
	return &((_Atomic(void *) *)node)[i];
}

/* Node at `level` on the path to vpn, creating missing ones if asked. */
static void *descend(struct ptable *pt, _Atomic(void *) *slot, bool create)
{
	void *n = atomic_load_explicit(slot, memory_order_acquire);
	if (n || !create)
		return n;
	void *fresh = node_alloc(pt);
	if (!fresh)
		return NULL;
	void *expected = NULL;
	if (atomic_compare_exchange_strong(slot, &expected, fresh))
		return fresh;
	/* Lost the race: the arena slot is wasted (4 KiB), never freed twice. */
	return expected;
}

_Atomic uint64_t *ptable_entry(struct ptable *pt, uintptr_t addr, bool create)
{
	uint64_t vpn = addr >> PAGE_SHIFT;
	void *n = descend(pt, &pt->root, create);
	for (int level = 0; n && level < LEVELS - 1; level++)
		n = descend(pt, child_slot(n, slot_of(vpn, level)), create);
	if (!n)
		return NULL;
	return &((_Atomic uint64_t *)n)[slot_of(vpn, LEVELS - 1)];
}

static int walk(void *node, int level, uint64_t base, uint64_t svpn, uint64_t evpn,
                ptable_fn fn, void *arg)
{
	unsigned shift = LEVEL_BITS * (LEVELS - 1 - level);
	uint64_t span = 1ULL << shift;
	for (unsigned i = 0; i < FANOUT; i++) {
		uint64_t lo = base + (uint64_t)i * span, hi = lo + span;
		if (hi <= svpn || lo >= evpn)
			continue;
		if (level == LEVELS - 1) {
			int r = fn((uintptr_t)(lo << PAGE_SHIFT), &((_Atomic uint64_t *)node)[i], arg);
			if (r)
				return r;
			continue;
		}
		void *c = atomic_load_explicit(child_slot(node, i), memory_order_acquire);
		if (!c)
			continue;
		int r = walk(c, level + 1, lo, svpn, evpn, fn, arg);
		if (r)
			return r;
	}
	return 0;
}

int ptable_walk(struct ptable *pt, uintptr_t start, uintptr_t end, ptable_fn fn, void *arg)
{
	void *root = atomic_load_explicit(&pt->root, memory_order_acquire);
	if (!root || start >= end)
		return 0;
	return walk(root, 0, 0, start >> PAGE_SHIFT, end >> PAGE_SHIFT, fn, arg);
}

/* ---- the entry lock ---- */

static void futex_wait32(_Atomic uint64_t *e, uint32_t val)
{
	syscall(SYS_futex, (uint32_t *)e, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake32(_Atomic uint64_t *e)
{
	syscall(SYS_futex, (uint32_t *)e, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

bool pte_trylock(_Atomic uint64_t *e, uint64_t *old)
{
	uint64_t v = atomic_load(e);
	while (!(v & PTE_BUSY)) {
		if (atomic_compare_exchange_weak(e, &v, v | PTE_BUSY)) {
			*old = v & ~(PTE_WAITERS | PTE_MARKS);
			TRACE(TR_LOCK, e, 1, v, 0);
			return true;
		}
	}
	return false;
}

uint64_t pte_lock(_Atomic uint64_t *e)
{
	uint64_t v = atomic_load(e);
	for (;;) {
		if (!(v & PTE_BUSY)) {
			if (atomic_compare_exchange_weak(e, &v, v | PTE_BUSY)) {
				TRACE(TR_LOCK, e, 0, v, 0);
				return v & ~(PTE_WAITERS | PTE_MARKS);
			}
			continue;
		}
		if (!(v & PTE_WAITERS)) {
			if (!atomic_compare_exchange_weak(e, &v, v | PTE_WAITERS))
				continue;
			v |= PTE_WAITERS;
		}
		futex_wait32(e, (uint32_t)v);
		v = atomic_load(e);
	}
}

void pte_note_waiter(struct uhmm *h, _Atomic uint64_t *e)
{
	uint64_t v = atomic_load(e);
	while ((v & PTE_BUSY) && !(v & PTE_WAITERS)) {
		if (atomic_compare_exchange_weak(e, &v, v | PTE_WAITERS))
			break;
	}
	(void)h;
}

void page_unlock(struct uhmm *h, _Atomic uint64_t *e, uint64_t newval)
{
	uint64_t v = atomic_load(e), nv;
	struct uhmm_dpage *drop = NULL;
	newval &= ~(PTE_BUSY | PTE_WAITERS | PTE_MARKS);
	TRACE(TR_UNLOCK, e, 1, v, newval);
	if (v & (PTE_REMAP | PTE_INSTALL)) {
		/* mremap moved this page away, or another page here, while we
		 * held it (maybe several times): the pending moves take and
		 * bring values in the order they were made (remap_release).
		 * The entry stays held while a page is still on its way here;
		 * otherwise newval is what is left here, and the marks set
		 * since the last move apply to it. */
		if (remap_release(h, e, &newval))
			return;
		v = atomic_load(e);
	}
	for (;;) {
		nv = newval;
		drop = NULL;
		if ((v & PTE_DISCARD) && !(v & PTE_REMAP)) {
			/* The CPU side discarded the page while we held it.  Data
			 * we moved to a device is dropped, as the application
			 * asked.  A page we (re)populated in system memory stays:
			 * we may have mapped it after the kernel's zap (then it is
			 * there, fresh), or before (then it is gone, and a fault
			 * there zero-fills it) — unless the range is unmapped. */
			unsigned st = pte_state(nv);
			if (st == UHMM_STATE_DEVICE || st == UHMM_STATE_DEVICE_COHERENT) {
				drop = pte_dpage(nv);
				nv = UHMM_STATE_NONE;
			} else if (v & PTE_UNMAPPED) {
				nv = UHMM_STATE_NONE;
			}
		}
		if (atomic_compare_exchange_weak(e, &v, nv))
			break;
	}
	TRACE(TR_UNLOCK, e, 0, v, nv);
	if (drop)
		dpage_put(drop);
	if (v & PTE_WAITERS) {
		futex_wake32(e);
		if (atomic_load(&h->waiting) > 0)
			service_kick(h);
	}
}
