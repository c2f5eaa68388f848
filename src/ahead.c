/* SPDX-License-Identifier: MIT */
/*
 * Fault-ahead: worker threads bring device-resident pages home ahead of a
 * CPU thread that reads through them sequentially (opt-in:
 * uhmm_options.fault_ahead, env UHMM_FAULT_AHEAD).
 *
 * A fault costs what its slowest step costs.  For a copy device (a GPU)
 * that is the kernel's UFFDIO_COPY, page allocation and copy, on the one
 * CPU that serves the fault: about 0.5 ms per 2 MiB on the H100 machine,
 * four times the DMA (docs/PERFORMANCE.md).  Once a thread streams (the
 * fault-around granule has grown to 2 MiB, fault.c), the next granules
 * are queued here and brought home on other CPUs while the thread reads
 * the current one, like the kernel's asynchronous readahead.
 *
 * Requests are hints:
 *  - queued lock-free from the fault path (the service thread, or a SIGBUS
 *    handler: a slot claimed by compare-and-swap, then a futex wake), and
 *    dropped when every slot is taken;
 *  - cancelled by any migration to a device that starts after they were
 *    queued (h->ahead.epoch): a worker checks the epoch after locking a
 *    window's pages, so uhmm_migrate(..., device) either waits for a
 *    window a worker locked first or makes the worker give it up; its
 *    result is never undone by a request queued before it;
 *  - run as uhmm_migrate(..., NULL) runs them (migrate_home_ahead): page
 *    locks, gate sections and the retry protocol apply unchanged, and a
 *    page the faulting thread is resolving is simply skipped.
 */
#include "internal.h"

#include <linux/futex.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { SLOT_FREE, SLOT_FILLING, SLOT_READY, SLOT_TAKEN };

static void futex_wake_all(_Atomic uint32_t *w)
{
	syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

static void futex_wait(_Atomic uint32_t *w, uint32_t val)
{
	syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

/* Async-signal-safe.  False when every slot is taken (the hint is dropped). */
bool ahead_queue(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	struct ahead *a = &h->ahead;
	if (!a->nworkers || start >= end)
		return false;
	for (unsigned i = 0; i < AHEAD_SLOTS; i++) {
		struct ahead_req *q = &a->req[i];
		unsigned st = SLOT_FREE;
		if (!atomic_compare_exchange_strong(&q->state, &st, SLOT_FILLING))
			continue;
		q->start = start;
		q->end = end;
		q->epoch = atomic_load(&a->epoch);
		atomic_store(&q->state, SLOT_READY);
		atomic_fetch_add(&a->seq, 1);
		futex_wake_all(&a->seq);
		return true;
	}
	return false;
}

void ahead_cancel(struct uhmm *h)
{
	atomic_fetch_add(&h->ahead.epoch, 1);
}

static bool take_one(struct ahead *a, struct ahead_req *out)
{
	for (unsigned i = 0; i < AHEAD_SLOTS; i++) {
		struct ahead_req *q = &a->req[i];
		unsigned st = SLOT_READY;
		if (!atomic_compare_exchange_strong(&q->state, &st, SLOT_TAKEN))
			continue;
		out->start = q->start;
		out->end = q->end;
		out->epoch = q->epoch;
		atomic_store(&q->state, SLOT_FREE);
		return true;
	}
	return false;
}

static void *ahead_main(void *arg)
{
	struct uhmm *h = arg;
	struct ahead *a = &h->ahead;
	struct mpage *p = malloc(BATCH_PAGES * sizeof(*p));
	sigset_t all;

	/* Signals are for the application's threads. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	while (!atomic_load(&a->stop)) {
		uint32_t seq = atomic_load(&a->seq);
		struct ahead_req q;
		if (!take_one(a, &q)) {
			if (!atomic_load(&a->stop))
				futex_wait(&a->seq, seq);
			continue;
		}
		if (p && atomic_load(&a->epoch) == q.epoch) {
			size_t n = migrate_home_ahead(h, q.start, q.end, q.epoch, p);
			stat_add(h, ST_AHEAD, n);
		}
	}
	free(p);
	return NULL;
}

int ahead_start(struct uhmm *h, unsigned granules)
{
	struct ahead *a = &h->ahead;
	a->granules = granules;
	if (!granules)
		return 0;
	unsigned want = MIN(granules, (unsigned)AHEAD_MAX_WORKERS);
	for (unsigned i = 0; i < want; i++) {
		if (pthread_create(&a->tid[i], NULL, ahead_main, h)) {
			ahead_stop(h);
			return -EAGAIN;
		}
		a->nworkers++;
	}
	return 0;
}

void ahead_stop(struct uhmm *h)
{
	struct ahead *a = &h->ahead;
	if (!a->nworkers)
		return;
	atomic_store(&a->stop, true);
	ahead_cancel(h);
	atomic_fetch_add(&a->seq, 1);
	futex_wake_all(&a->seq);
	for (unsigned i = 0; i < a->nworkers; i++)
		pthread_join(a->tid[i], NULL);
	a->nworkers = 0;
}
