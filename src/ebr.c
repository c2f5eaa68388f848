/* SPDX-License-Identifier: MIT */
/*
 * Epoch-based reclamation for the range registry.
 *
 * Readers (fault handlers, even inside a signal handler) announce
 * themselves in one of two counters chosen by the epoch's parity; they
 * never wait.  The epoch may advance from e to e+1 only when no reader of
 * parity e+1 (that is, of epoch e-1) remains.  Something unpublished while
 * the epoch was r can be freed once the epoch reaches r+2: every reader
 * that could have seen it has left by then.
 */
#include "internal.h"

#include <sched.h>
#include <stdlib.h>

struct retired {
	void *p;
	uint64_t epoch;
	struct retired *next;
};

static _Atomic uint64_t g_epoch;
static _Atomic long g_active[2];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct retired *g_retired;

unsigned ebr_enter(void)
{
	for (;;) {
		uint64_t e = atomic_load(&g_epoch);
		atomic_fetch_add(&g_active[e & 1], 1);
		if (atomic_load(&g_epoch) == e)
			return (unsigned)(e & 1);
		atomic_fetch_sub(&g_active[e & 1], 1);
	}
}

void ebr_exit(unsigned token)
{
	atomic_fetch_sub(&g_active[token & 1], 1);
}

/* Advance once if possible; g_lock held. */
static bool try_advance(void)
{
	uint64_t e = atomic_load(&g_epoch);
	if (atomic_load(&g_active[(e + 1) & 1]) != 0)
		return false;
	atomic_store(&g_epoch, e + 1);
	return true;
}

static void reclaim(void)
{
	uint64_t e = atomic_load(&g_epoch);
	struct retired **pp = &g_retired;
	while (*pp) {
		struct retired *r = *pp;
		if (e >= r->epoch + 2) {
			*pp = r->next;
			free(r->p);
			free(r);
		} else {
			pp = &r->next;
		}
	}
}

void ebr_retire(void *p)
{
	if (!p)
		return;
	struct retired *r = malloc(sizeof(*r));
	pthread_mutex_lock(&g_lock);
	if (!r) {
		/* Cannot defer: wait for readers instead of leaking or racing. */
		pthread_mutex_unlock(&g_lock);
		ebr_synchronize();
		free(p);
		return;
	}
	r->p = p;
	r->epoch = atomic_load(&g_epoch);
	r->next = g_retired;
	g_retired = r;
	try_advance();
	try_advance();
	reclaim();
	pthread_mutex_unlock(&g_lock);
}

void ebr_reset_child(void)
{
	/* Readers were other threads of the parent: they do not exist here.
	 * Retired objects are the parent's; forgetting them leaks a little
	 * in the child rather than freeing what another reader might use. */
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	g_lock = fresh;
	atomic_store(&g_active[0], 0);
	atomic_store(&g_active[1], 0);
	g_retired = NULL;
}

void ebr_synchronize(void)
{
	pthread_mutex_lock(&g_lock);
	uint64_t target = atomic_load(&g_epoch) + 2;
	while (atomic_load(&g_epoch) < target) {
		if (!try_advance()) {
			pthread_mutex_unlock(&g_lock);
			sched_yield();
			pthread_mutex_lock(&g_lock);
		}
	}
	reclaim();
	pthread_mutex_unlock(&g_lock);
}
