/* SPDX-License-Identifier: MIT */
/*
 * The identity gate: makes "the page at this address" mean the same
 * memory from the moment uhmm checks it to the moment it moves its data.
 *
 * The problem.  The application's munmap, mremap and madvise return as
 * soon as the service thread has *read* their event, and the kernel lets
 * userfaultfd calls succeed again from then on, while we may not have
 * handled the event yet.  Another thread can then map new memory at the
 * freed addresses.  A migration that checked a page's entry before that
 * and moves its data after it would move the new mapping's data
 * (UFFDIO_MOVE takes any anonymous source page) under the old entry.
 *
 * The rule.  Code that moves data in or out of application addresses does
 * so inside a section (gate_enter .. gate_exit) that the service thread
 * never reads its userfaultfd during:
 *   - on entry, every event read so far has been handled, so page entries
 *     (and the marks events leave on locked entries) and the registry
 *     describe the current mappings: the caller re-checks them;
 *   - a change the kernel makes meanwhile keeps its event unread until the
 *     section ends, and until it is read the kernel fails every
 *     userfaultfd call with EAGAIN (its mmap_changing count);
 * so a userfaultfd call in a section either acts on the memory that was
 * checked or fails with -EAGAIN (the uffd wrappers do not wait inside a
 * section: only the service thread can end that wait).
 *
 * What a section may not do: wait for the service thread (madvise or
 * munmap of registered memory, self_change_end), sleep on a page lock, or
 * touch managed memory.  Page locks are taken before entering.
 *
 * The service thread closes the gate around each read and the handling of
 * what it read (it waits for open sections, which are short: one batch of
 * kernel calls).  Threads already waiting to enter go first, so a spinning
 * service thread cannot starve migrations.  Signal-safe: atomics and
 * sched_yield only; a section is re-entrant on one thread.
 */
#include "internal.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define GATE_SVC (1u << 31) /* the service thread reads or handles a batch */

static __thread struct {
	struct uhmm *h;
	unsigned depth;
} tls_gate __attribute__((tls_model("initial-exec")));

static __thread bool tls_service __attribute__((tls_model("initial-exec")));

void gate_set_service_thread(void)
{
	tls_service = true;
}

/* Debugging aid (UHMM_DEBUG_GATE=1): who holds a section when the service
 * thread has waited for one for seconds. */
#define HOLDERS 64
static _Atomic(uintptr_t) g_holder_pc[HOLDERS];
static _Atomic(long) g_holder_tid[HOLDERS];
static __thread int tls_slot = -1;
/* -1 until the first service thread looks at UHMM_DEBUG_GATE (getenv is
 * not for signal handlers, which enter the gate too). */
static _Atomic int g_debug = -1;

static void holder_set(uintptr_t pc)
{
	if (atomic_load_explicit(&g_debug, memory_order_relaxed) != 1)
		return; /* sections are a hot path: record holders only when asked */
	if (tls_slot < 0) {
		long tid = syscall(SYS_gettid);
		tls_slot = (int)(tid % HOLDERS);
		atomic_store(&g_holder_tid[tls_slot], tid);
	}
	atomic_store(&g_holder_pc[tls_slot], pc);
}

static void holders_dump(void)
{
	for (int i = 0; i < HOLDERS; i++) {
		uintptr_t pc = atomic_load(&g_holder_pc[i]);
		if (pc)
			fprintf(stderr, "uhmm: gate held by tid %ld, entered from %p\n",
			        atomic_load(&g_holder_tid[i]), (void *)pc);
	}
}

bool gate_enter(struct uhmm *h)
{
	if (tls_service)
		return false; /* it holds the gate closed while it works */
	if (tls_gate.depth && tls_gate.h == h) {
		tls_gate.depth++;
		return true;
	}
	if (tls_gate.depth)
		return false; /* inside another context's section: never nest two gates */
	atomic_fetch_add(&h->gate_waiters, 1);
	for (;;) {
		unsigned g = atomic_load(&h->gate);
		if (g & GATE_SVC) {
			sched_yield();
			continue;
		}
		if (atomic_compare_exchange_weak(&h->gate, &g, g + 1))
			break;
	}
	atomic_fetch_sub(&h->gate_waiters, 1);
	tls_gate.h = h;
	tls_gate.depth = 1;
	holder_set((uintptr_t)__builtin_return_address(0));
	uffd_nowait(true);
	return true;
}

void gate_exit(struct uhmm *h, bool entered)
{
	if (!entered || --tls_gate.depth)
		return;
	uffd_nowait(false);
	tls_gate.h = NULL;
	holder_set(0);
	atomic_fetch_sub(&h->gate, 1);
}

void gate_close(struct uhmm *h)
{
	/* Let threads that are waiting to enter go first (bounded). */
	for (int i = 0; i < 64 && atomic_load(&h->gate_waiters) > 0; i++)
		sched_yield();
	atomic_fetch_or(&h->gate, GATE_SVC);
	if (atomic_load(&g_debug) < 0)
		atomic_store(&g_debug, getenv("UHMM_DEBUG_GATE") != NULL);
	bool debug = atomic_load(&g_debug) == 1;
	time_t t0 = debug ? time(NULL) : 0;
	for (unsigned spins = 0; atomic_load(&h->gate) & ~GATE_SVC; spins++) {
		if (spins > 64)
			sched_yield();
		if (debug && (spins & 0xffff) == 0 && time(NULL) - t0 > 5) {
			holders_dump();
			t0 = time(NULL);
		}
	}
}

void gate_open(struct uhmm *h)
{
	atomic_fetch_and(&h->gate, ~GATE_SVC);
}

unsigned gate_pause(struct uhmm *h)
{
	if (tls_service || !tls_gate.depth || tls_gate.h != h)
		return 0;
	unsigned depth = tls_gate.depth;
	tls_gate.depth = 1;
	gate_exit(h, true);
	return depth;
}

void gate_resume(struct uhmm *h, unsigned depth)
{
	if (!depth)
		return;
	gate_enter(h);
	tls_gate.depth = depth;
}

bool gate_held(void)
{
	return tls_gate.depth != 0;
}

void gate_wait_service(struct uhmm *h)
{
	/* A kernel call failed with EAGAIN: an event is queued.  Wait for a
	 * whole read-and-handle cycle that starts after now. */
	uint64_t seq = atomic_load(&h->svc_seq);
	uint64_t target = seq + ((seq & 1) ? 3 : 2);
	service_kick(h);
	for (unsigned i = 0; atomic_load(&h->svc_seq) < target && !atomic_load(&h->stopping); i++)
		sched_yield();
}
