/* SPDX-License-Identifier: MIT */
/*
 * The move-staging area: where a migration to a copy device (any device
 * that is not HOST_BACKED: every real one) takes the pages before the
 * device copies them.
 *
 * Why: the device must copy data that no CPU can change under it, and the
 * application's mapping must lose the pages at the same instant, or a
 * write racing the copy is lost.  UFFDIO_MOVE does both at once: the run
 * leaves the application's page table for an area only uhmm maps (a CPU
 * touch of a page in flight faults and waits on its page lock), the
 * device copies from there, and the pages are freed afterwards.  No
 * write-protect, no read through /proc/self/mem, and no discard of
 * application memory by address (the copy fallback's windows: README
 * "Copy fallback windows").
 *
 * Layout and ownership: STAGE_SLOTS slots of one batch (BATCH_PAGES pages,
 * 2 MiB) each, in one anonymous mapping registered with the context's
 * userfaultfd (UFFDIO_MOVE moves only into registered memory) and in the
 * registry as a pool (not the application's memory).  Bit i of `busy`
 * says slot i is not free: claimed by one migration window (stage_get,
 * before the window's gate section, until after its pages are unlocked),
 * or given back and not yet emptied (bit i of `dirty`, under mu, with how
 * many of its first pages may hold data).  A free slot maps no page.  So
 * the host keeps at most STAGE_SLOTS x 2 MiB of data that left for a
 * device, and only while migrations are in flight: uhmm_migrate empties
 * what is left before it returns (stage_drain).
 *
 * Emptying: freeing the pages costs as much as moving them and more (a
 * third of a bare move + copy + free loop), so during a migration it is
 * the cleaner thread's work, off the migration's path.  stage_put hands
 * the slot over and wakes the cleaner once half the area waits (a wake-up
 * costs about what emptying a slot does; stage_get wakes it when no slot
 * is free); the cleaner empties the given-back slots, neighbours in one
 * call (slot_empty), then frees them in `busy`.  It holds no page lock,
 * is never in the gate, and raises no event.  It is started with the area
 * and stopped before the service thread (stage_stop: it empties what is
 * left first); the mapping lives until the context is destroyed.
 */
#include "internal.h"

#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>

#define STAGE_BYTES ((size_t)BATCH_PAGES * PAGE_SIZE)

/*
 * Empty [s, s + len) of the area.  An madvise of registered memory would
 * raise a REMOVE event: a round trip through the service thread, and while
 * it is queued every migration's UFFDIO_MOVE fails with EAGAIN (the kernel
 * counts pending events per userfaultfd).  Unregistered, the part raises
 * none; it is registered again at once.  The slots are claimed by us, so
 * no move targets them meanwhile.  false: the part could not be emptied or
 * registered again.
 */
#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif

static bool slot_empty(struct uhmm *h, char *s, size_t len)
{
	TRACE(TR_MADV, (uintptr_t)s, 1, len, 0);
	if (uffd_unregister(h->uffd, (uintptr_t)s, len))
		return false;
	int r = madvise(s, len, MADV_DONTNEED);
	if (r && errno == EINVAL)
		r = madvise(s, len, MADV_DONTNEED_LOCKED); /* mlocked (mlockall) */
	return uffd_register(h->uffd, (uintptr_t)s, len, false, NULL) == 0 && r == 0;
}

/* Take every slot given back (mu held); *pages: how much of each to empty. */
static uint64_t take_dirty(struct uhmm *h, size_t pages[STAGE_SLOTS])
{
	uint64_t todo = h->stage.dirty;
	memcpy(pages, h->stage.dirty_pages, STAGE_SLOTS * sizeof(pages[0]));
	h->stage.dirty = 0;
	return todo;
}

/* Empty the slots of `todo` (taken by take_dirty), runs of whole slots in
 * one call, then free them. */
static void empty_slots(struct uhmm *h, uint64_t todo, const size_t pages[STAGE_SLOTS])
{
	for (int i = 0; i < STAGE_SLOTS;) {
		if (!(todo & (1ULL << i))) {
			i++;
			continue;
		}
		int j = i;
		while (j + 1 < STAGE_SLOTS && (todo & (1ULL << (j + 1))) && pages[j] == BATCH_PAGES)
			j++;
		size_t len = (size_t)(j - i) * STAGE_BYTES + pages[j] * PAGE_SIZE;
		char *s = h->stage.base + (size_t)i * STAGE_BYTES;
		if (len && !slot_empty(h, s, len)) {
			/* Keep a slot that could not be emptied (or registered
			 * again) claimed for good: a move into it would fail.
			 * With every slot lost, stage_get says so. */
			for (int q = i; q <= j; q++) {
				todo &= ~(1ULL << q);
				atomic_fetch_or(&h->stage.lost, 1ULL << q);
			}
		}
		i = j + 1;
	}
	atomic_fetch_and(&h->stage.busy, ~todo);
}

/* Empty the slots given back, as they come; until told to stop. */
static void *cleaner_main(void *arg)
{
	struct uhmm *h = arg;
	pthread_mutex_lock(&h->stage.mu);
	for (;;) {
		while (!h->stage.dirty && !h->stage.stop)
			pthread_cond_wait(&h->stage.cv, &h->stage.mu);
		size_t pages[STAGE_SLOTS];
		uint64_t todo = take_dirty(h, pages);
		if (!todo)
			break; /* stopping, and nothing left */
		pthread_mutex_unlock(&h->stage.mu);
		empty_slots(h, todo, pages);
		pthread_mutex_lock(&h->stage.mu);
	}
	pthread_mutex_unlock(&h->stage.mu);
	return NULL;
}

/* The area, mapped once (first copy device created, application thread).
 * 0 or -errno. */
int stage_init(struct uhmm *h)
{
	pthread_mutex_lock(&h->stage.init_lock);
	int r = 0;
	if (h->stage.base || !h->use_move)
		goto out;
	size_t len = STAGE_SLOTS * STAGE_BYTES;
	char *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
	               -1, 0);
	if (b == MAP_FAILED) {
		r = -errno;
		goto out;
	}
	/* Never shared with a child: a shared page could not be moved out. */
	madvise(b, len, MADV_DONTFORK);
	/* Page by page, like the application pages that arrive. */
	madvise(b, len, MADV_NOHUGEPAGE);
	/* Under mlockall(MCL_FUTURE) the area would be locked and populated:
	 * every slot full.  Unlocked and empty, moves out of locked memory
	 * are refused (the kernel wants both alike) and take the copy
	 * fallback; others work. */
	if (munlock(b, len) == 0)
		madvise(b, len, MADV_DONTNEED);
	r = pool_register(h, (uintptr_t)b, (uintptr_t)b + len);
	if (!r) {
		r = uffd_register(h->uffd, (uintptr_t)b, len, false, NULL);
		if (r)
			pool_forget(h, (uintptr_t)b, (uintptr_t)b + len);
	}
	if (!r) {
		/* Application signals are not for this thread.  It reads the
		 * area's address only for slots given back, so none before the
		 * address is published below. */
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		r = -pthread_create(&h->stage.cleaner, NULL, cleaner_main, h);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (r) {
			uffd_unregister(h->uffd, (uintptr_t)b, len);
			pool_forget(h, (uintptr_t)b, (uintptr_t)b + len);
		}
	}
	if (r) {
		munmap(b, len);
		goto out;
	}
	h->stage.cleaner_running = true;
	atomic_store(&h->stage.base, b);
out:
	pthread_mutex_unlock(&h->stage.init_lock);
	return r;
}

void stage_stop(struct uhmm *h)
{
	if (!h->stage.cleaner_running)
		return;
	pthread_mutex_lock(&h->stage.mu);
	h->stage.stop = true;
	pthread_cond_signal(&h->stage.cv);
	pthread_mutex_unlock(&h->stage.mu);
	pthread_join(h->stage.cleaner, NULL);
	h->stage.cleaner_running = false;
}

void stage_destroy(struct uhmm *h)
{
	stage_stop(h);
	char *b = atomic_load(&h->stage.base);
	if (!b)
		return;
	size_t len = STAGE_SLOTS * STAGE_BYTES;
	uffd_unregister(h->uffd, (uintptr_t)b, len);
	pool_forget(h, (uintptr_t)b, (uintptr_t)b + len);
	munmap(b, len);
	h->stage.base = NULL;
}

/* An empty slot of one batch, or NULL when there is no area (or every slot
 * was lost: the copy fallback then).  Waits while every slot is claimed (a
 * slot is held for one window's migration). */
char *stage_get(struct uhmm *h, int *slot)
{
	char *b = atomic_load(&h->stage.base);
	if (!b || atomic_load(&h->stage.lost) == (1ULL << STAGE_SLOTS) - 1)
		return NULL;
	for (;;) {
		uint64_t busy = atomic_load(&h->stage.busy);
		for (int i = 0; i < STAGE_SLOTS; i++) {
			if (busy & (1ULL << i))
				continue;
			if (!(atomic_fetch_or(&h->stage.busy, 1ULL << i) & (1ULL << i))) {
				*slot = i;
				return b + (size_t)i * STAGE_BYTES;
			}
		}
		/* Every slot claimed: those given back may wait for a wake-up. */
		pthread_mutex_lock(&h->stage.mu);
		if (h->stage.dirty)
			pthread_cond_signal(&h->stage.cv);
		pthread_mutex_unlock(&h->stage.mu);
		sched_yield();
	}
}

/*
 * The end of a migration to a copy device: the slots still waiting for the
 * cleaner are emptied here, so that when uhmm_migrate returns the host
 * keeps no copy of what left (a slot the cleaner is emptying now is its
 * own business and done in a moment).
 */
void stage_drain(struct uhmm *h)
{
	if (!h->stage.cleaner_running)
		return;
	size_t pages[STAGE_SLOTS];
	pthread_mutex_lock(&h->stage.mu);
	uint64_t todo = take_dirty(h, pages);
	pthread_mutex_unlock(&h->stage.mu);
	if (todo)
		empty_slots(h, todo, pages);
}

/* Give slot back: its first `pages` pages (those a move may have filled)
 * are emptied by the cleaner before the slot can be claimed again. */
void stage_put(struct uhmm *h, int slot, size_t pages)
{
	pthread_mutex_lock(&h->stage.mu);
	h->stage.dirty |= 1ULL << slot;
	h->stage.dirty_pages[slot] = pages;
	/* Waking the cleaner costs about as much as emptying a slot: wake it
	 * for half the area at once (stage_get wakes it when it runs out). */
	if (__builtin_popcountll(h->stage.dirty) >= STAGE_SLOTS / 2)
		pthread_cond_signal(&h->stage.cv);
	pthread_mutex_unlock(&h->stage.mu);
}
