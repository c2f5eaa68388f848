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
 * registry as a pool (its events are not the application's).  A slot is
 * claimed whole by one migration window (bit i of `busy`) from before the
 * window's gate section until after its pages are unlocked, and is empty
 * (no page mapped) whenever it is not claimed: the claimer empties it
 * before giving it back (stage_put).  So the host keeps at most
 * STAGE_SLOTS x 2 MiB of data that left for a device, and only while it
 * is in flight.
 *
 * Emptying is an madvise(MADV_DONTNEED) of the registered area: it raises
 * a REMOVE event and waits for the service thread to read it, so it runs
 * out of the gate, never in a signal handler, and never under a lock the
 * service thread takes.  The mapping lives until the context is
 * destroyed (after the service thread stopped).
 */
#include "internal.h"

#include <sched.h>
#include <sys/mman.h>

#define STAGE_BYTES ((size_t)BATCH_PAGES * PAGE_SIZE)

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
	r = pool_register(h, (uintptr_t)b, (uintptr_t)b + len);
	if (!r) {
		r = uffd_register(h->uffd, (uintptr_t)b, len, false, NULL);
		if (r)
			pool_forget(h, (uintptr_t)b, (uintptr_t)b + len);
	}
	if (r) {
		munmap(b, len);
		goto out;
	}
	atomic_store(&h->stage.base, b);
out:
	pthread_mutex_unlock(&h->stage.init_lock);
	return r;
}

void stage_destroy(struct uhmm *h)
{
	char *b = atomic_load(&h->stage.base);
	if (!b)
		return;
	size_t len = STAGE_SLOTS * STAGE_BYTES;
	uffd_unregister(h->uffd, (uintptr_t)b, len);
	pool_forget(h, (uintptr_t)b, (uintptr_t)b + len);
	munmap(b, len);
	h->stage.base = NULL;
}

/* An empty slot of one batch, or NULL when there is no area.  Waits while
 * every slot is claimed (a slot is held for one window's migration). */
char *stage_get(struct uhmm *h, int *slot)
{
	char *b = atomic_load(&h->stage.base);
	if (!b)
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
		sched_yield();
	}
}

/* Give slot back, emptying its first `pages` pages (those a move may have
 * filled).  Out of the gate. */
void stage_put(struct uhmm *h, int slot, size_t pages)
{
	char *s = h->stage.base + (size_t)slot * STAGE_BYTES;
	if (pages) {
		TRACE(TR_MADV, (uintptr_t)s, 1, pages * PAGE_SIZE, 0);
		madvise(s, pages * PAGE_SIZE, MADV_DONTNEED);
	}
	atomic_fetch_and(&h->stage.busy, ~(1ULL << slot));
}
