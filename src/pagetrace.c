/* SPDX-License-Identifier: MIT */
/*
 * Debugging aid, built only with `meson configure -Dtrace=true`
 * (UHMM_TRACE): an in-memory ring of recent page-level events (entry
 * locks and unlocks, marks left by kernel events, userfaultfd calls,
 * registry edits, faults), and a dump of those about one address,
 * following it back through mremap.  Without UHMM_TRACE the TRACE()
 * macro is empty and this file compiles to nothing.
 *
 * Signal-safe on the recording side (atomics and thread-local data only).
 */
#include "internal.h"

#ifdef UHMM_TRACE

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TRACE_SLOTS (1u << 21)

struct trace_rec {
	_Atomic uint64_t seq; /* 0: empty or being written */
	uint32_t tid;
	uint32_t op;
	uintptr_t e, a;
	uint64_t len, x, y;
};

static struct trace_rec *g_ring;
static _Atomic uint64_t g_seq;
static __thread uint32_t tls_tid __attribute__((tls_model("initial-exec")));

static const char *const names[PT__N] = {
#define X(n) [PT_##n] = #n,
	PTRACE_OPS(X)
#undef X
};

__attribute__((constructor)) static void ptrace_init(void)
{
	void *p = mmap(NULL, TRACE_SLOTS * sizeof(struct trace_rec), PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p != MAP_FAILED) {
		madvise(p, TRACE_SLOTS * sizeof(struct trace_rec), MADV_DONTFORK);
		g_ring = p;
	}
}

void ptrace_rec(unsigned op, uintptr_t e, uintptr_t a, uint64_t len, uint64_t x, uint64_t y)
{
	if (!g_ring)
		return;
	if (!tls_tid)
		tls_tid = (uint32_t)syscall(SYS_gettid);
	uint64_t s = atomic_fetch_add(&g_seq, 1) + 1;
	struct trace_rec *r = &g_ring[s & (TRACE_SLOTS - 1)];
	atomic_store_explicit(&r->seq, 0, memory_order_relaxed);
	r->tid = tls_tid;
	r->op = op;
	r->e = e;
	r->a = a;
	r->len = len;
	r->x = x;
	r->y = y;
	atomic_store_explicit(&r->seq, s, memory_order_release);
}

void uhmm_trace_note(unsigned op, const void *addr, size_t len, uint64_t x, uint64_t y)
{
	ptrace_rec(op, 0, (uintptr_t)addr, len, x, y);
}

#define MAXT 16

static bool covers(uintptr_t a, uint64_t len, uintptr_t t)
{
	return t >= a && t - a < (len ? len : 1);
}

static _Atomic uintptr_t g_anomaly;

void ptrace_anomaly(uintptr_t addr)
{
	atomic_store(&g_anomaly, addr);
}

/* Records about page `addr` (and where mremap brought it from), oldest first. */
static void dump_one(struct uhmm *h, const void *addr)
{
	uintptr_t t[MAXT];
	uintptr_t te[MAXT];
	int nt = 1;
	t[0] = (uintptr_t)addr & ~PAGE_MASK;
	uint64_t last = atomic_load(&g_seq);
	uint64_t first = last > TRACE_SLOTS ? last - TRACE_SLOTS + 1 : 1;
	/* Newest to oldest: an mremap to a tracked address adds its source. */
	for (uint64_t s = last; s >= first && s > 0; s--) {
		struct trace_rec *r = &g_ring[s & (TRACE_SLOTS - 1)];
		if (atomic_load(&r->seq) != s)
			continue;
		if (r->op != PT_EV_REMAP && r->op != PT_APP_MREMAP)
			continue;
		/* a = from, x = to, len */
		for (int i = 0; i < nt && nt < MAXT; i++) {
			if (covers(r->x, r->len, t[i])) {
				uintptr_t from = r->a + (t[i] - r->x);
				bool have = false;
				for (int j = 0; j < nt; j++)
					have |= t[j] == from;
				if (!have)
					t[nt++] = from;
			}
		}
	}
	for (int i = 0; i < nt; i++) {
		te[i] = (uintptr_t)ptable_entry(&h->pt, t[i], false);
		fprintf(stderr, "uhmm-trace: tracking %#lx (entry %#lx)\n", (unsigned long)t[i],
		        (unsigned long)te[i]);
	}
	unsigned printed = 0;
	for (uint64_t s = first; s <= last; s++) {
		struct trace_rec *r = &g_ring[s & (TRACE_SLOTS - 1)];
		if (atomic_load(&r->seq) != s)
			continue;
		bool hit = false;
		for (int i = 0; i < nt && !hit; i++) {
			if (r->e)
				hit = te[i] && r->e == te[i];
			else
				hit = covers(r->a, r->len, t[i]) ||
				      ((r->op == PT_UFFD_MOVE || r->op == PT_EV_REMAP ||
				        r->op == PT_APP_MREMAP) && covers(r->x, r->len, t[i]));
		}
		if (!hit)
			continue;
		printed++;
		fprintf(stderr, "uhmm-trace: %8lu t%-6u %-16s e=%#lx a=%#lx len=%#lx x=%#lx y=%#lx\n",
		        (unsigned long)s, r->tid, r->op < PT__N ? names[r->op] : "?",
		        (unsigned long)r->e, (unsigned long)r->a, (unsigned long)r->len,
		        (unsigned long)r->x, (unsigned long)r->y);
	}
	fprintf(stderr, "uhmm-trace: %u records of %lu\n", printed, (unsigned long)(last - first + 1));
}

/* The whole ring, oldest first, to the file UHMM_TRACE_FILE names. */
static void dump_all(void)
{
	const char *path = getenv("UHMM_TRACE_FILE");
	FILE *f = path ? fopen(path, "w") : NULL;
	if (!f)
		return;
	uint64_t last = atomic_load(&g_seq);
	uint64_t first = last > TRACE_SLOTS ? last - TRACE_SLOTS + 1 : 1;
	for (uint64_t s = first; s <= last; s++) {
		struct trace_rec *r = &g_ring[s & (TRACE_SLOTS - 1)];
		if (atomic_load(&r->seq) != s)
			continue;
		fprintf(f, "%8lu t%-6u %-16s e=%#lx a=%#lx len=%#lx x=%#lx y=%#lx\n", (unsigned long)s,
		        r->tid, r->op < PT__N ? names[r->op] : "?", (unsigned long)r->e,
		        (unsigned long)r->a, (unsigned long)r->len, (unsigned long)r->x,
		        (unsigned long)r->y);
	}
	fclose(f);
}

void uhmm_trace_dump(struct uhmm *h, const void *addr)
{
	if (!g_ring)
		return;
	dump_all();
	if (!addr)
		return;
	dump_one(h, addr);
	uintptr_t an = atomic_load(&g_anomaly);
	if (an) {
		fprintf(stderr, "uhmm-trace: the last anomaly was at %#lx:\n", (unsigned long)an);
		dump_one(h, (const void *)an);
	}
	uint64_t last = atomic_load(&g_seq);
	uint64_t first = last > TRACE_SLOTS ? last - TRACE_SLOTS + 1 : 1;
	/* And what the calling thread itself did last. */
	uint32_t me = tls_tid;
	unsigned mine = 0;
	uint64_t s = last;
	for (; s >= first && s > 0 && mine < 120; s--) {
		struct trace_rec *r = &g_ring[s & (TRACE_SLOTS - 1)];
		if (atomic_load(&r->seq) == s && r->tid == me)
			mine++;
	}
	fprintf(stderr, "uhmm-trace: the last %u records of thread %u:\n", mine, me);
	for (; s <= last; s++) {
		struct trace_rec *r = &g_ring[s & (TRACE_SLOTS - 1)];
		if (atomic_load(&r->seq) != s || r->tid != me)
			continue;
		fprintf(stderr, "uhmm-trace: %8lu t%-6u %-16s e=%#lx a=%#lx len=%#lx x=%#lx y=%#lx\n",
		        (unsigned long)s, r->tid, r->op < PT__N ? names[r->op] : "?",
		        (unsigned long)r->e, (unsigned long)r->a, (unsigned long)r->len,
		        (unsigned long)r->x, (unsigned long)r->y);
	}
}

#endif
