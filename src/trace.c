/* SPDX-License-Identifier: MIT */
/*
 * Debugging aid (UHMM_DEBUG_TRACE=1, read once at uhmm_open): a ring of
 * the last few million page-lock transitions, kernel calls and device-page
 * events, so that a test that finds lost data can print the history of
 * that page (uhmm_debug_trace_dump) instead of only its final state.
 * Off, it costs one relaxed load per trace point.  Signal-safe (atomics
 * and plain stores into a pre-mapped ring).
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TRACE_RECS (1UL << 22)

struct trace_rec {
	uint64_t seq;
	uint32_t tid;
	uint32_t kind;
	uintptr_t pc;
	uintptr_t a, b;
	uint64_t x, y;
};

_Atomic int g_trace_on;
static struct trace_rec *g_ring;
static _Atomic uint64_t g_seq;
static __thread uint32_t tls_tid __attribute__((tls_model("initial-exec")));

void trace_init(void)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	const char *s = getenv("UHMM_DEBUG_TRACE");
	if (!s || !*s || *s == '0')
		return;
	pthread_mutex_lock(&lock);
	if (!g_ring) {
		void *p = mmap(NULL, TRACE_RECS * sizeof(struct trace_rec), PROT_READ | PROT_WRITE,
		               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p != MAP_FAILED) {
			madvise(p, TRACE_RECS * sizeof(struct trace_rec), MADV_DONTFORK);
			g_ring = p;
			atomic_store(&g_trace_on, 1);
		}
	}
	pthread_mutex_unlock(&lock);
}

void trace_rec(unsigned kind, uintptr_t pc, uintptr_t a, uintptr_t b, uint64_t x, uint64_t y)
{
	if (!tls_tid)
		tls_tid = (uint32_t)syscall(SYS_gettid);
	uint64_t s = atomic_fetch_add_explicit(&g_seq, 1, memory_order_relaxed) + 1;
	struct trace_rec *r = &g_ring[s % TRACE_RECS];
	r->seq = 0;
	atomic_signal_fence(memory_order_seq_cst);
	r->tid = tls_tid;
	r->kind = kind;
	r->pc = pc;
	r->a = a;
	r->b = b;
	r->x = x;
	r->y = y;
	atomic_store_explicit((_Atomic uint64_t *)&r->seq, s, memory_order_release);
}

static const char *const kind_name[] = {
	[TR_LOCK] = "lock",         [TR_UNLOCK] = "unlock",     [TR_MOVE] = "MOVE",
	[TR_COPY] = "COPY",         [TR_ZERO] = "ZEROPAGE",     [TR_WP] = "WP",
	[TR_MADV] = "madvise",      [TR_PREAD] = "procread",    [TR_PWRITE] = "procwrite",
	[TR_EV_REMOVE] = "ev-remove", [TR_EV_UNMAP] = "ev-unmap", [TR_EV_REMAP] = "ev-remap",
	[TR_DP_ALLOC] = "dp-alloc", [TR_DP_PUT] = "dp-put",     [TR_DP_FREE] = "dp-free",
	[TR_DP_VA] = "dp-vaddr",    [TR_REG] = "register",      [TR_UNREG] = "unregister",
	[TR_RANGE_ADD] = "range-add", [TR_RANGE_REMOVE] = "range-remove", [TR_FORK] = "fork",
	[TR_DEVMEM_ADD] = "devmem-add", [TR_DEVMEM_DESTROY] = "devmem-destroy",
	[TR_SCAN] = "scan-present", [TR_DRAIN] = "drain-slot", [TR_SIGBUS] = "sigbus", [TR_MOVE_UNREPORTED] = "move-unreported",
	[TR_REMAP_CHAIN] = "remap-chain",
};

static bool is_dev(uint64_t v)
{
	return pte_state(v) == UHMM_STATE_DEVICE || pte_state(v) == UHMM_STATE_DEVICE_COHERENT;
}

/* Does record r concern [lo, hi)? (a range kind, or a page entry) */
static bool rec_touches(const struct trace_rec *r, uintptr_t lo, uintptr_t hi, uintptr_t e)
{
	switch (r->kind) {
	case TR_LOCK:
	case TR_UNLOCK:
		return e && r->a == e;
	case TR_MOVE:
	case TR_COPY:
	case TR_MOVE_UNREPORTED:
		return (r->a < hi && r->a + r->x > lo) || (r->b < hi && r->b + r->x > lo);
	case TR_PREAD:
	case TR_PWRITE:
	case TR_ZERO:
	case TR_WP:
	case TR_MADV:
	case TR_REG:
	case TR_UNREG:
	case TR_SCAN:
	case TR_DRAIN:
		return r->a < hi && r->a + r->x > lo;
	case TR_EV_REMOVE:
	case TR_EV_UNMAP:
	case TR_RANGE_ADD:
	case TR_RANGE_REMOVE:
		return r->a < hi && r->b > lo;
	case TR_EV_REMAP:
		return (r->a < hi && r->a + r->x > lo) || (r->b < hi && r->b + r->x > lo);
	case TR_FORK:
		return true;
	case TR_SIGBUS:
		return r->a >= lo && r->a < hi;
	default:
		return false;
	}
}

#define MAX_DPS 64

void uhmm_debug_trace_dump(struct uhmm *h, const void *addr)
{
	if (!atomic_load(&g_trace_on) || !h)
		return;
	atomic_store(&g_trace_on, 0); /* freeze the ring */
	usleep(10000);
	uintptr_t base = (uintptr_t)&trace_init; /* pc offsets are relative to trace_init */
	uintptr_t page = (uintptr_t)addr & ~PAGE_MASK;
	_Atomic uint64_t *pe = ptable_entry(&h->pt, page, false);
	uintptr_t e = (uintptr_t)pe;
	uint64_t last = atomic_load(&g_seq);
	uint64_t first = last > TRACE_RECS - 1 ? last - (TRACE_RECS - 1) : 1;
	/* Pass 1: the device pages and pool slots this page's data went through. */
	uintptr_t dps[MAX_DPS], slots[MAX_DPS];
	size_t nd = 0, ns = 0;
	for (uint64_t s = first; s <= last; s++) {
		struct trace_rec *r = &g_ring[s % TRACE_RECS];
		if (r->seq != s || !rec_touches(r, page, page + PAGE_SIZE, e))
			continue;
		uintptr_t dp = 0, slot = 0;
		if ((r->kind == TR_LOCK || r->kind == TR_UNLOCK) && r->a == e) {
			uint64_t v = r->kind == TR_LOCK ? r->x : r->y;
			if (pte_state(v) == UHMM_STATE_DEVICE || pte_state(v) == UHMM_STATE_DEVICE_COHERENT)
				dp = (uintptr_t)pte_dpage(v);
		} else if (r->kind == TR_MOVE || r->kind == TR_COPY) {
			slot = (r->a >= page && r->a < page + PAGE_SIZE) ? r->b : r->a;
			if (r->x > PAGE_SIZE) {
				/* Which page of the run. */
				uintptr_t mine = r->a <= page && page < r->a + r->x ? r->a : r->b;
				slot += page - mine;
			}
			slot &= ~PAGE_MASK;
		}
		bool seen = false;
		for (size_t i = 0; dp && i < nd; i++)
			seen |= dps[i] == dp;
		if (dp && !seen && nd < MAX_DPS)
			dps[nd++] = dp;
		seen = false;
		for (size_t i = 0; slot && i < ns; i++)
			seen |= slots[i] == slot;
		if (slot && !seen && ns < MAX_DPS)
			slots[ns++] = slot;
	}
	fprintf(stderr, "uhmm-trace: page %#lx entry %p now %#lx; %zu device pages, %zu slots; "
	        "records %lu..%lu; pc offsets from trace_init %#lx\n", (unsigned long)page, (void *)pe,
	        pe ? (unsigned long)atomic_load(pe) : 0UL, nd, ns, (unsigned long)first,
	        (unsigned long)last, (unsigned long)base);
	size_t shown = 0;
	for (uint64_t s = first; s <= last; s++) {
		struct trace_rec *r = &g_ring[s % TRACE_RECS];
		if (r->seq != s)
			continue;
		bool hit = rec_touches(r, page, page + PAGE_SIZE, e);
		for (size_t i = 0; !hit && i < nd; i++)
			hit = (r->kind >= TR_DP_ALLOC && r->kind <= TR_DP_VA && r->a == dps[i]) ||
			      ((r->kind == TR_LOCK || r->kind == TR_UNLOCK) &&
			       (pte_dpage(r->x) == (void *)dps[i] || pte_dpage(r->y) == (void *)dps[i]) &&
			       (is_dev(r->x) || is_dev(r->y)));
		for (size_t i = 0; !hit && i < ns; i++)
			hit = r->kind != TR_LOCK && r->kind != TR_UNLOCK &&
			      rec_touches(r, slots[i], slots[i] + PAGE_SIZE, 0);
		if (!hit)
			continue;
		shown++;
		fprintf(stderr, "uhmm-trace: %lu tid %u %-14s pc +%#lx a %#lx b %#lx x %#lx y %#lx\n",
		        (unsigned long)s, r->tid, r->kind < sizeof(kind_name) / sizeof(kind_name[0]) &&
		        kind_name[r->kind] ? kind_name[r->kind] : "?", (unsigned long)(r->pc - base),
		        (unsigned long)r->a, (unsigned long)r->b, (unsigned long)r->x, (unsigned long)r->y);
	}
	fprintf(stderr, "uhmm-trace: %zu records shown\n", shown);
	/* The whole ring, for offline analysis (UHMM_DEBUG_TRACE_FILE). */
	const char *path = getenv("UHMM_DEBUG_TRACE_FILE");
	FILE *f = path ? fopen(path, "w") : NULL;
	if (f) {
		fprintf(f, "base %#lx first %lu last %lu\n", (unsigned long)base, (unsigned long)first,
		        (unsigned long)last);
		for (uint64_t s = first; s <= last; s++) {
			struct trace_rec *r = &g_ring[s % TRACE_RECS];
			if (r->seq != s)
				continue;
			fprintf(f, "%lu %u %s %#lx %#lx %#lx %#lx %#lx\n", (unsigned long)s, r->tid,
			        r->kind < sizeof(kind_name) / sizeof(kind_name[0]) && kind_name[r->kind]
			                ? kind_name[r->kind] : "?",
			        (unsigned long)(r->pc - base), (unsigned long)r->a, (unsigned long)r->b,
			        (unsigned long)r->x, (unsigned long)r->y);
		}
		fclose(f);
		fprintf(stderr, "uhmm-trace: ring written to %s\n", path);
	}
}
