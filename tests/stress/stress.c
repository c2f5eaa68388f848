/* SPDX-License-Identifier: MIT */
/*
 * uhmm-stress: model-based random testing of uhmm.
 *
 * Several threads run random sequences of operations on one context with
 * two dummy devices (A and B) and check every byte they touched against a
 * shadow model after every step.
 *
 * Concurrency design (what keeps the model exact):
 *  - each thread owns REGIONS regions of managed (or temporarily
 *    unmanaged) memory; only the owner changes their data or their mapping
 *    (CPU writes, device writes, munmap, mremap, madvise, range
 *    remove/add, reallocation) and only the owner checks them, against its
 *    private shadow copy of every byte;
 *  - any thread may run operations that never change data on any region,
 *    its own or another's: uhmm_migrate to A / B / system memory, device
 *    reads (not checked: the owner may be writing), uhmm_dummy_release,
 *    devmem add/remove.  Other threads learn region addresses through
 *    atomically published (base, npages) pairs that may be stale: a stale
 *    address is unmanaged (the call fails cleanly) or belongs to a region
 *    the call cannot harm;
 *  - two documented limitations of the copy fallback are kept out of the
 *    model with --no-move (README "Copy fallback windows"): an application
 *    madvise(MADV_DONTNEED) of a page that a copy-fallback migration is
 *    moving at that instant may keep its pre-discard data; and pages
 *    unmapped under such a migration, whose addresses a new mapping takes
 *    before its discard, can be discarded.  With --no-move the owner takes
 *    its region's lock exclusively around madvise and around every change
 *    of the region's mappings (munmap, mremap, release), publishing the new
 *    address under it; other threads migrate a region only under that lock
 *    held shared (try-lock), so the address they read is current and stays
 *    mapped until they are done.
 *
 * Reproducibility: thread t draws from its own generator seeded with
 * (seed, t): the sequence of operations of every thread replays with
 * --seed; with --threads 1 the whole run replays exactly (interleavings of
 * several threads differ between runs).
 *
 * On a mismatch: seed, operation number, thread, address, expected and
 * actual bytes and the page state (uhmm_query) are printed; exit status 1.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uhmm.h"

#ifdef UHMM_TRACE
/* Built with -Dtrace=true: note the model's own operations in uhmm's event
 * ring and dump what it holds about a failing page (src/pagetrace.c). */
#include "../../src/internal.h"
#define NOTE(op, a, len, x, y) \
	uhmm_trace_note(PT_##op, (const void *)(a), (size_t)(len), (uint64_t)(x), (uint64_t)(y))
#else
#define NOTE(op, a, len, x, y) ((void)0)
#endif

#define REGIONS    4
#define MAX_DEVMEM 8

static size_t PS;

/* ---- options ---- */
static uint64_t opt_seed;
static unsigned long opt_ops = 100000;
static unsigned opt_threads = 4;
static size_t opt_size = 1u << 20; /* bytes of memory per thread */
static enum uhmm_fault_mode opt_mode = UHMM_FAULT_AUTO;
static bool opt_no_move;
static bool opt_mremap_back;        /* mremap: away and straight back over the first address */
static bool opt_copy_device;        /* A and B are copy devices (not HOST_BACKED) */
static unsigned opt_fallback_delay; /* µs: the copy fallback's window, widened */
/* The library's test hook (src/internal.h; linked statically). */
extern void (*_Atomic debug_hook)(int point, uintptr_t addr, size_t len);
static bool opt_verbose;

/* ---- global state ---- */
static struct uhmm *H;
static struct uhmm_device *devA, *devB;
static size_t max_pages; /* pages per region at most */

static pthread_mutex_t devmem_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uhmm_devmem *devmems[MAX_DEVMEM];
static int ndevmem;

static atomic_ulong total_ops, pages_checked, mismatches, forks, migrations, dev_ops,
	devmem_adds, devmem_removes, mremaps, munmaps, madvises, range_removes, range_adds,
	reallocs, cpu_writes, release_busy;
static atomic_bool failed;

/* ---- random numbers (splitmix64 seeding, xorshift64*) ---- */
struct rng {
	uint64_t s;
};

static uint64_t splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static uint64_t rnd(struct rng *r)
{
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 0x2545F4914F6CDD1DULL;
}

static size_t rnd_below(struct rng *r, size_t n)
{
	return n ? (size_t)(rnd(r) % n) : 0;
}

/* ---- regions ---- */
struct region {
	/* Published for other threads (may be stale when read). */
	_Atomic uintptr_t pub_base;
	_Atomic size_t pub_npages;
	pthread_rwlock_t lk; /* --no-move: madvise vs migrations (see top) */
	/* Owner-only. */
	char *base;
	size_t npages;
	unsigned char *shadow;  /* npages * PS expected bytes */
	unsigned char *mapped;  /* per page */
	unsigned char *managed; /* per page */
	bool live;
};

struct worker {
	unsigned id;
	pthread_t th;
	struct rng rng;
	unsigned long op;     /* operation number within this thread */
	const char *opname;
	const char *prevop;
	unsigned long nops;
	/* The last operations, printed on failure to help replay by reading. */
	struct { const char *name; int region; void *base; } hist[16];
	unsigned nhist;
	struct region reg[REGIONS];
	unsigned char *buf;   /* max_pages * PS */
};

static struct worker *W;

static void publish(struct region *r)
{
	atomic_store(&r->pub_npages, 0);
	atomic_store(&r->pub_base, r->live ? (uintptr_t)r->base : 0);
	atomic_store(&r->pub_npages, r->live ? r->npages : 0);
}

/* --no-move: the owner's changes of a region's mappings exclude other
 * threads' migrations of it (see the top of the file). */
static void mapping_change_begin(struct region *r)
{
	if (opt_no_move)
		pthread_rwlock_wrlock(&r->lk);
}

static void mapping_change_end(struct region *r)
{
	if (opt_no_move)
		pthread_rwlock_unlock(&r->lk);
}

static const char *state_name(enum uhmm_state s)
{
	switch (s) {
	case UHMM_STATE_NONE: return "NONE";
	case UHMM_STATE_SYSTEM: return "SYSTEM";
	case UHMM_STATE_DEVICE: return "DEVICE";
	case UHMM_STATE_DEVICE_COHERENT: return "DEVICE_COHERENT";
	case UHMM_STATE_POISONED: return "POISONED";
	}
	return "?";
}

static const char *dev_name(struct uhmm_device *d)
{
	return d == devA ? "A" : d == devB ? "B" : d ? "?" : "-";
}

/* Report a failure and stop the whole run (other threads keep running
 * while we print, so exit without running uhmm_close). */
/* Library debugging aid (src/trace.c): with UHMM_DEBUG_TRACE=1, the
 * recent history of a page. */
void uhmm_debug_trace_dump(struct uhmm *h, const void *addr);

static void fail(struct worker *w, const void *addr, const char *fmt, ...)
{
	static pthread_mutex_t out = PTHREAD_MUTEX_INITIALIZER;
	pthread_mutex_lock(&out);
	atomic_store(&failed, true);
	atomic_fetch_add(&mismatches, 1);
	va_list ap;
	fprintf(stderr, "uhmm-stress: FAILED seed=%" PRIu64 " thread=%u op=%lu (%s) addr=%p: ",
	        opt_seed, w->id, w->op, w->opname, addr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
#ifdef UHMM_TRACE
	NOTE(APP_FAIL, addr, PS, w->id, w->op);
	uhmm_trace_dump(H, addr); /* the ring to UHMM_TRACE_FILE; about addr if any */
#endif
	for (unsigned k = w->nhist > 16 ? w->nhist - 16 : 0; k < w->nhist; k++)
		fprintf(stderr, "uhmm-stress:   history: %s region %d base %p\n", w->hist[k % 16].name,
		        w->hist[k % 16].region, w->hist[k % 16].base);
	if (addr)
		uhmm_debug_trace_dump(H, addr);
	if (addr) {
		struct uhmm_page_info pi;
		int rc = uhmm_query(H, (const void *)((uintptr_t)addr & ~(PS - 1)), 1, &pi);
		if (rc == 0)
			fprintf(stderr, "uhmm-stress: page state %s device %s\n", state_name(pi.state),
			        dev_name(pi.device));
		else
			fprintf(stderr, "uhmm-stress: page not managed (uhmm_query %d)\n", rc);
		/* Events (unmap, remap) are handled after the syscall returns:
		 * tell a window from a lasting state. */
		usleep(200000);
		rc = uhmm_query(H, (const void *)((uintptr_t)addr & ~(PS - 1)), 1, &pi);
		fprintf(stderr, "uhmm-stress: 200 ms later: uhmm_query %d, state %s device %s\n", rc,
		        rc ? "-" : state_name(pi.state), rc ? "-" : dev_name(pi.device));
		fprintf(stderr, "uhmm-stress: previous operation of this thread: %s\n", w->prevop);
	}
	fprintf(stderr, "uhmm-stress: replay with: uhmm-stress --seed %" PRIu64
	        " --threads %u --ops %lu --size %zu --mode %s%s%s%s --fallback-delay %u\n",
	        opt_seed, opt_threads, opt_ops, opt_size,
	        opt_mode == UHMM_FAULT_THREAD ? "thread" : opt_mode == UHMM_FAULT_SIGBUS ? "sigbus" : "auto",
	        opt_no_move ? " --no-move" : "", opt_mremap_back ? " --mremap-back" : "",
	        opt_copy_device ? " --copy-device" : "", opt_fallback_delay);
	fflush(stderr);
	_exit(1);
}

/* Compare got (n pages) with the shadow of pages [first, first+n). */
static void compare(struct worker *w, struct region *r, size_t first, size_t n,
                    const unsigned char *got, const char *how)
{
	const unsigned char *exp = r->shadow + first * PS;
	if (memcmp(got, exp, n * PS) == 0) {
		atomic_fetch_add(&pages_checked, n);
		return;
	}
	for (size_t i = 0; i < n * PS; i++)
		if (got[i] != exp[i]) {
			size_t off = i & ~(size_t)7;
			uint64_t e, g;
			memcpy(&e, exp + off, 8);
			memcpy(&g, got + off, 8);
			fail(w, r->base + first * PS + i,
			     "%s: page %zu of region (base %p, %zu pages) byte %zu: expected %#" PRIx64
			     " got %#" PRIx64 " (8 bytes at offset %zu)",
			     how, first + i / PS, (void *)r->base, r->npages, i % PS, e, g, off % PS);
		}
}

static void check_cpu(struct worker *w, struct region *r, size_t first, size_t n)
{
	NOTE(APP_CHECK, r->base + first * PS, n * PS, 0, 0);
	/* Volatile-ish copy: the reads fault pages home. */
	for (size_t i = 0; i < n; i++) {
		const volatile unsigned char *src = (const volatile unsigned char *)(r->base + (first + i) * PS);
		unsigned char *dst = w->buf + i * PS;
		for (size_t j = 0; j < PS; j += 8)
			*(uint64_t *)(dst + j) = *(const volatile uint64_t *)(src + j);
	}
	compare(w, r, first, n, w->buf, "CPU read");
}

static void check_dev(struct worker *w, struct region *r, size_t first, size_t n,
                      struct uhmm_device *d)
{
	memset(w->buf, 0xA5, n * PS);
	NOTE(APP_CHECK, r->base + first * PS, n * PS, d == devA ? 1 : 2, 0);
	int rc = uhmm_dummy_read(d, r->base + first * PS, w->buf, n, NULL);
	if (rc)
		fail(w, r->base + first * PS, "uhmm_dummy_read(%s, %zu pages) = %d", dev_name(d), n, rc);
	compare(w, r, first, n, w->buf, d == devA ? "device A read" : "device B read");
}

static void check_any(struct worker *w, struct region *r, size_t first, size_t n)
{
	switch (rnd_below(&w->rng, 4)) {
	case 0: check_dev(w, r, first, n, devA); break;
	case 1: check_dev(w, r, first, n, devB); break;
	default: check_cpu(w, r, first, n); break;
	}
}

/* States must be consistent with the model: never POISONED here, device
 * pages on A or B, a page whose expected content is not zero never NONE. */
static void check_states(struct worker *w, struct region *r, size_t first, size_t n)
{
	struct uhmm_page_info inf[64];
	n = n > 64 ? 64 : n;
	int rc = uhmm_query(H, r->base + first * PS, n, inf);
	if (rc) {
		/* Which pages: one by one, and the mappings there. */
		for (size_t i = 0; i < n; i++) {
			struct uhmm_page_info one;
			int r1 = uhmm_query(H, r->base + (first + i) * PS, 1, &one);
			fprintf(stderr, "uhmm-stress:   page %zu (%p): query %d managed-in-model %d\n",
			        first + i, (void *)(r->base + (first + i) * PS), r1, r->managed[first + i]);
		}
		char cmd[160];
		snprintf(cmd, sizeof(cmd), "grep -i '^%lx\\|^%.8lx' /proc/%d/maps >&2",
		         (unsigned long)(uintptr_t)r->base, (unsigned long)(uintptr_t)r->base >> 16, (int)getpid());
		if (system(cmd))
			(void)0;
		fail(w, r->base + first * PS, "uhmm_query(%zu managed pages) = %d", n, rc);
	}
	for (size_t i = 0; i < n; i++) {
		const unsigned char *exp = r->shadow + (first + i) * PS;
		bool zero = exp[0] == 0 && memcmp(exp, exp + 1, PS - 1) == 0;
		switch (inf[i].state) {
		case UHMM_STATE_NONE:
			if (!zero)
				fail(w, r->base + (first + i) * PS, "state NONE but the page holds data");
			/* fallthrough */
		case UHMM_STATE_SYSTEM:
			if (inf[i].device)
				fail(w, r->base + (first + i) * PS, "state %s with a device",
				     state_name(inf[i].state));
			break;
		case UHMM_STATE_DEVICE:
			if (inf[i].device != devA && inf[i].device != devB)
				fail(w, r->base + (first + i) * PS, "state DEVICE on unknown device %p",
				     (void *)inf[i].device);
			break;
		default:
			fail(w, r->base + (first + i) * PS, "unexpected state %s", state_name(inf[i].state));
		}
	}
}

/* A random run [first, first+n) of pages with mapped==1 (and, if
 * want_managed >= 0, managed == want_managed); n <= maxn.  false if none. */
static bool pick_run(struct worker *w, struct region *r, int want_managed, size_t maxn,
                     size_t *first, size_t *n)
{
	if (!r->live)
		return false;
	size_t start = rnd_below(&w->rng, r->npages);
	for (size_t k = 0; k < r->npages; k++) {
		size_t i = (start + k) % r->npages;
		if (!r->mapped[i] || (want_managed >= 0 && r->managed[i] != want_managed))
			continue;
		size_t lim = 1 + rnd_below(&w->rng, maxn);
		size_t j = i + 1;
		while (j < r->npages && j - i < lim && r->mapped[j] &&
		       (want_managed < 0 || r->managed[j] == want_managed))
			j++;
		*first = i;
		*n = j - i;
		return true;
	}
	return false;
}

static bool all_managed(struct region *r, size_t first, size_t n)
{
	for (size_t i = first; i < first + n; i++)
		if (!r->managed[i])
			return false;
	return true;
}

/* ---- region life cycle ---- */

static void region_alloc(struct worker *w, struct region *r)
{
	size_t np = 1 + rnd_below(&w->rng, max_pages);
	void *p = NULL;
	r->npages = np;
	memset(r->shadow, 0, np * PS);
	if (rnd_below(&w->rng, 2) == 0) {
		int rc = uhmm_alloc(H, np * PS, &p);
		if (rc)
			fail(w, NULL, "uhmm_alloc(%zu pages) = %d", np, rc);
	} else {
		/* Adopt ordinary memory that already holds data. */
		p = mmap(NULL, np * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			fail(w, NULL, "mmap: %s", strerror(errno));
		size_t k = rnd_below(&w->rng, np + 1);
		for (size_t i = 0; i < k; i++) {
			size_t pg = rnd_below(&w->rng, np);
			uint64_t v = rnd(&w->rng) | 1;
			for (size_t j = 0; j < PS; j += 8)
				memcpy(r->shadow + pg * PS + j, &v, 8), v = v * 6364136223846793005ULL + 1;
			memcpy((char *)p + pg * PS, r->shadow + pg * PS, PS);
		}
		NOTE(APP_RANGE_ADD, p, np * PS, 1, 0);
		int rc = uhmm_range_add(H, p, np * PS);
		if (rc)
			fail(w, p, "uhmm_range_add(%zu pages) of fresh memory = %d", np, rc);
	}
	NOTE(APP_ALLOC, p, np * PS, 0, 0);
	r->base = p;
	memset(r->mapped, 1, np);
	memset(r->managed, 1, np);
	r->live = true;
	publish(r);
}

/* Unmap every page still mapped; the region is then dead. */
static void region_release(struct worker *w, struct region *r)
{
	if (!r->live)
		return;
	bool whole = true;
	for (size_t i = 0; i < r->npages; i++)
		whole &= r->mapped[i] && r->managed[i];
	mapping_change_begin(r);
	r->live = false;
	publish(r);
	if (whole && rnd_below(&w->rng, 2) == 0) {
		NOTE(APP_FREE, r->base, r->npages * PS, 0, 0);
		int rc = uhmm_free(H, r->base, r->npages * PS);
		if (rc)
			fail(w, r->base, "uhmm_free(%zu pages) = %d", r->npages, rc);
		mapping_change_end(r);
		return;
	}
	for (size_t i = 0; i < r->npages;) {
		if (!r->mapped[i]) {
			i++;
			continue;
		}
		size_t j = i;
		while (j < r->npages && r->mapped[j])
			j++;
		NOTE(APP_MUNMAP, r->base + i * PS, (j - i) * PS, 1, 0);
		if (munmap(r->base + i * PS, (j - i) * PS))
			fail(w, r->base + i * PS, "munmap: %s", strerror(errno));
		NOTE(APP_MUNMAP, r->base + i * PS, (j - i) * PS, 1, 1);
		i = j;
	}
	mapping_change_end(r);
}

/* ---- operations ---- */

static void op_cpu_write(struct worker *w, struct region *r)
{
	size_t f, n;
	if (!pick_run(w, r, -1, 8, &f, &n))
		return;
	for (size_t i = f; i < f + n; i++) {
		unsigned char *s = r->shadow + i * PS;
		char *p = r->base + i * PS;
		if (rnd_below(&w->rng, 2)) {
			uint64_t v = rnd(&w->rng);
			for (size_t j = 0; j < PS; j += 8) {
				v ^= v << 13, v ^= v >> 7, v ^= v << 17;
				memcpy(s + j, &v, 8);
			}
			memcpy(p, s, PS);
			NOTE(APP_CPU_WRITE, p, PS, *(uint64_t *)s, 0);
		} else {
			unsigned k = 1 + (unsigned)rnd_below(&w->rng, 8);
			while (k--) {
				size_t off = rnd_below(&w->rng, PS);
				unsigned char b = (unsigned char)rnd(&w->rng);
				s[off] = b;
				*(volatile unsigned char *)(p + off) = b;
				NOTE(APP_CPU_WRITE, p, PS, *(uint64_t *)s, off + 1);
			}
		}
	}
	atomic_fetch_add(&cpu_writes, 1);
	check_any(w, r, f, n);
}

static void op_cpu_read(struct worker *w, struct region *r)
{
	size_t f, n;
	if (pick_run(w, r, -1, 16, &f, &n))
		check_cpu(w, r, f, n);
}

/* The whole region in order, 16 pages at a time: long enough for the
 * fault granule to grow to 2 MiB, and for fault-ahead (UHMM_FAULT_AHEAD)
 * to start, in regions of 4 MiB or more (--size 16M).  Off unless
 * --stream-weight is given. */
static void op_cpu_stream(struct worker *w, struct region *r)
{
	for (size_t i = 0; i < r->npages;) {
		if (!r->mapped[i]) {
			i++;
			continue;
		}
		size_t n = 1;
		while (n < 16 && i + n < r->npages && r->mapped[i + n])
			n++;
		check_cpu(w, r, i, n);
		i += n;
	}
}

static struct uhmm_device *pick_target(struct rng *g)
{
	switch (rnd_below(g, 3)) {
	case 0: return devA;
	case 1: return devB;
	default: return NULL;
	}
}

static void op_migrate_own(struct worker *w, struct region *r)
{
	size_t f, n;
	if (!pick_run(w, r, -1, 64, &f, &n))
		return;
	struct uhmm_device *to = pick_target(&w->rng);
	struct uhmm_migrate_result res = { 12345, 12345 };
	NOTE(APP_MIGRATE, r->base + f * PS, n * PS, (uintptr_t)to, 0);
	int rc = uhmm_migrate(H, r->base + f * PS, n * PS, to, &res);
	NOTE(APP_MIGRATE, r->base + f * PS, n * PS, (uintptr_t)to, 1);
	atomic_fetch_add(&migrations, 1);
	if (all_managed(r, f, n)) {
		if (rc)
			fail(w, r->base + f * PS, "uhmm_migrate(%zu managed pages, to %s) = %d", n,
			     dev_name(to), rc);
		if (res.migrated + res.skipped != n)
			fail(w, r->base + f * PS, "uhmm_migrate(%zu pages): migrated %zu + skipped %zu", n,
			     res.migrated, res.skipped);
		check_states(w, r, f, n);
	} else if (rc != -EINVAL && rc != -ENOENT) {
		fail(w, r->base + f * PS, "uhmm_migrate of partly unmanaged pages = %d", rc);
	}
	/* Check on the device the pages went to (keeps them there) or the CPU. */
	if (to && rnd_below(&w->rng, 2))
		check_dev(w, r, f, n, to);
	else
		check_any(w, r, f, n);
}

static void op_dev_write(struct worker *w, struct region *r)
{
	size_t f, n;
	if (!pick_run(w, r, -1, 16, &f, &n))
		return;
	struct uhmm_device *d = rnd_below(&w->rng, 2) ? devA : devB;
	for (size_t i = 0; i < n; i++) {
		uint64_t v = rnd(&w->rng);
		for (size_t j = 0; j < PS; j += 8) {
			v ^= v << 13, v ^= v >> 7, v ^= v << 17;
			memcpy(w->buf + i * PS + j, &v, 8);
		}
	}
	NOTE(APP_DEV_WRITE, r->base + f * PS, n * PS, *(uint64_t *)w->buf, 0);
	int rc = uhmm_dummy_write(d, r->base + f * PS, w->buf, n, NULL);
	NOTE(APP_DEV_WRITE, r->base + f * PS, n * PS, *(uint64_t *)w->buf, 1);
	if (rc)
		fail(w, r->base + f * PS, "uhmm_dummy_write(%s, %zu pages) = %d", dev_name(d), n, rc);
	memcpy(r->shadow + f * PS, w->buf, n * PS);
	atomic_fetch_add(&dev_ops, 1);
	check_any(w, r, f, n);
}

static void op_dev_read(struct worker *w, struct region *r)
{
	size_t f, n;
	if (!pick_run(w, r, -1, 16, &f, &n))
		return;
	atomic_fetch_add(&dev_ops, 1);
	check_dev(w, r, f, n, rnd_below(&w->rng, 2) ? devA : devB);
}

static void op_release(struct worker *w, struct region *r)
{
	struct uhmm_device *d = rnd_below(&w->rng, 2) ? devA : devB;
	int rc = uhmm_dummy_release(d);
	/* -EBUSY: a page could not come back, e.g. its address was unmapped
	 * by its owner at that instant; the data checks tell if one was lost. */
	if (rc == -EBUSY)
		atomic_fetch_add(&release_busy, 1);
	else if (rc)
		fail(w, NULL, "uhmm_dummy_release(%s) = %d", dev_name(d), rc);
	atomic_fetch_add(&dev_ops, 1);
	size_t f, n;
	if (pick_run(w, r, -1, 16, &f, &n))
		check_any(w, r, f, n);
}

static void op_munmap(struct worker *w, struct region *r)
{
	size_t f, n;
	if (!pick_run(w, r, -1, 8, &f, &n))
		return;
	mapping_change_begin(r);
	NOTE(APP_MUNMAP, r->base + f * PS, n * PS, 0, 0);
	if (munmap(r->base + f * PS, n * PS))
		fail(w, r->base + f * PS, "munmap: %s", strerror(errno));
	NOTE(APP_MUNMAP, r->base + f * PS, n * PS, 0, 1);
	memset(r->mapped + f, 0, n);
	atomic_fetch_add(&munmaps, 1);
	bool any = false;
	for (size_t i = 0; i < r->npages; i++)
		any |= r->mapped[i];
	if (!any) {
		r->live = false;
		publish(r);
	}
	mapping_change_end(r);
	if (!any)
		return;
	/* Neighbours keep their data. */
	size_t f2, n2;
	if (pick_run(w, r, -1, 16, &f2, &n2))
		check_any(w, r, f2, n2);
}

static void op_realloc(struct worker *w, struct region *r)
{
	region_release(w, r);
	region_alloc(w, r);
	atomic_fetch_add(&reallocs, 1);
	size_t f, n;
	if (pick_run(w, r, -1, 16, &f, &n))
		check_any(w, r, f, n);
}

static void op_mremap(struct worker *w, struct region *r)
{
	if (!r->live)
		return;
	bool man = r->managed[0];
	for (size_t i = 0; i < r->npages; i++)
		if (!r->mapped[i] || r->managed[i] != man)
			return; /* holes or mixed: more than one VMA */
	size_t len = r->npages * PS;
	void *dst = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (dst == MAP_FAILED)
		fail(w, NULL, "mmap: %s", strerror(errno));
	mapping_change_begin(r);
	NOTE(APP_MREMAP, r->base, len, dst, 0);
	void *np = mremap(r->base, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	NOTE(APP_MREMAP, r->base, len, dst, 1);
	if (np == MAP_FAILED) {
		/* EFAULT: the region spans several VMAs (re-added in pieces). */
		int e = errno;
		mapping_change_end(r);
		munmap(dst, len);
		if (e != EFAULT)
			fail(w, r->base, "mremap: %s", strerror(e));
		return;
	}
	/* Back over the address just freed, before the first move's events
	 * are handled (mremap returns once they are read), unless another
	 * thread's mapping took it meanwhile (never replace that). */
	void *back = opt_mremap_back ? mmap(r->base, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS |
	                                    MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0)
	                             : MAP_FAILED;
	if (back != MAP_FAILED && back != r->base) {
		munmap(back, len); /* a kernel without MAP_FIXED_NOREPLACE: a hint */
		back = MAP_FAILED;
	}
	if (back != MAP_FAILED) {
		NOTE(APP_MREMAP, np, len, back, 0);
		void *bp = mremap(np, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, back);
		NOTE(APP_MREMAP, np, len, back, 1);
		if (bp == MAP_FAILED)
			fail(w, np, "mremap back: %s", strerror(errno));
		np = bp;
		atomic_fetch_add(&mremaps, 1);
	}
	r->base = np;
	publish(r);
	mapping_change_end(r);
	atomic_fetch_add(&mremaps, 1);
	size_t f, n;
	if (pick_run(w, r, -1, 32, &f, &n)) {
		check_any(w, r, f, n);
		if (man && rnd_below(&w->rng, 2))
			check_states(w, r, f, n);
	}
}

static void op_madvise(struct worker *w, struct region *r)
{
	size_t f, n;
	if (!pick_run(w, r, -1, 8, &f, &n))
		return;
	if (opt_no_move)
		pthread_rwlock_wrlock(&r->lk);
	NOTE(APP_MADVISE, r->base + f * PS, n * PS, 0, 0);
	int rc = madvise(r->base + f * PS, n * PS, MADV_DONTNEED);
	NOTE(APP_MADVISE, r->base + f * PS, n * PS, 0, 1);
	if (opt_no_move)
		pthread_rwlock_unlock(&r->lk);
	if (rc)
		fail(w, r->base + f * PS, "madvise: %s", strerror(errno));
	memset(r->shadow + f * PS, 0, n * PS);
	atomic_fetch_add(&madvises, 1);
	check_any(w, r, f, n);
}

static void op_range_remove(struct worker *w, struct region *r)
{
	size_t f, n;
	if (!pick_run(w, r, 1, 16, &f, &n))
		return;
	NOTE(APP_RANGE_REMOVE, r->base + f * PS, n * PS, 0, 0);
	int rc = uhmm_range_remove(H, r->base + f * PS, n * PS);
	NOTE(APP_RANGE_REMOVE, r->base + f * PS, n * PS, 0, 1);
	if (rc)
		fail(w, r->base + f * PS, "uhmm_range_remove(%zu pages) = %d", n, rc);
	memset(r->managed + f, 0, n);
	atomic_fetch_add(&range_removes, 1);
	struct uhmm_page_info pi;
	rc = uhmm_query(H, r->base + f * PS, 1, &pi);
	if (rc != -ENOENT)
		fail(w, r->base + f * PS, "uhmm_query after uhmm_range_remove = %d", rc);
	/* Ordinary memory now, same data. */
	check_cpu(w, r, f, n);
}

static void op_range_add(struct worker *w, struct region *r)
{
	size_t f, n;
	if (!pick_run(w, r, 0, 16, &f, &n))
		return;
	NOTE(APP_RANGE_ADD, r->base + f * PS, n * PS, 0, 0);
	int rc = uhmm_range_add(H, r->base + f * PS, n * PS);
	NOTE(APP_RANGE_ADD, r->base + f * PS, n * PS, 0, 1);
	if (rc)
		fail(w, r->base + f * PS, "uhmm_range_add(%zu pages) = %d", n, rc);
	memset(r->managed + f, 1, n);
	atomic_fetch_add(&range_adds, 1);
	check_any(w, r, f, n);
}

static void op_devmem(struct worker *w)
{
	struct uhmm_devmem *m = NULL;
	/* nslots counts blocks listed and being added, so that concurrent
	 * adds never list more than MAX_DEVMEM. */
	static size_t nslots;
	pthread_mutex_lock(&devmem_lock);
	bool add = nslots < MAX_DEVMEM && (ndevmem == 0 || rnd_below(&w->rng, 2));
	if (add)
		nslots++;
	else if (ndevmem)
		m = devmems[--ndevmem];
	pthread_mutex_unlock(&devmem_lock);
	if (!add && !m)
		return; /* every slot is being added */
	struct uhmm_device *d = rnd_below(&w->rng, 2) ? devA : devB;
	if (add) {
		size_t np = 16 + rnd_below(&w->rng, 256);
		int rc = uhmm_devmem_add(d, np * PS, 0, &m);
		if (rc == -EINVAL || rc == -EOPNOTSUPP)
			rc = uhmm_devmem_add(d, np * PS,
			                     UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE, &m);
		if (rc)
			fail(w, NULL, "uhmm_devmem_add(%s, %zu pages) = %d", dev_name(d), np, rc);
		pthread_mutex_lock(&devmem_lock);
		devmems[ndevmem++] = m;
		pthread_mutex_unlock(&devmem_lock);
		atomic_fetch_add(&devmem_adds, 1);
	} else {
		int rc = uhmm_devmem_remove(m);
		if (rc == -EBUSY) {
			pthread_mutex_lock(&devmem_lock);
			devmems[ndevmem++] = m;
			pthread_mutex_unlock(&devmem_lock);
		} else if (rc) {
			fail(w, NULL, "uhmm_devmem_remove = %d", rc);
		} else {
			pthread_mutex_lock(&devmem_lock);
			nslots--;
			pthread_mutex_unlock(&devmem_lock);
			atomic_fetch_add(&devmem_removes, 1);
		}
	}
}

/* Operations on another thread's region: never change data. */
static void op_foreign(struct worker *w)
{
	struct worker *o = &W[rnd_below(&w->rng, opt_threads)];
	struct region *r = &o->reg[rnd_below(&w->rng, REGIONS)];
	if (opt_no_move && pthread_rwlock_tryrdlock(&r->lk))
		return;
	uintptr_t base = atomic_load(&r->pub_base);
	size_t np = atomic_load(&r->pub_npages);
	if (base && np) {
		size_t f = rnd_below(&w->rng, np);
		size_t n = 1 + rnd_below(&w->rng, np - f);
		if (rnd_below(&w->rng, 4)) {
			struct uhmm_migrate_result res;
			struct uhmm_device *to = pick_target(&w->rng);
			NOTE(APP_FOREIGN, base + f * PS, n * PS, (uintptr_t)to, 0);
			int rc = uhmm_migrate(H, (void *)(base + f * PS), n * PS, to, &res);
			NOTE(APP_FOREIGN, base + f * PS, n * PS, (uintptr_t)to, rc);
			if (rc && rc != -EINVAL && rc != -ENOENT)
				fail(w, (void *)(base + f * PS), "foreign uhmm_migrate = %d", rc);
			if (!rc && res.migrated + res.skipped != n)
				fail(w, (void *)(base + f * PS), "foreign uhmm_migrate(%zu): %zu + %zu", n,
				     res.migrated, res.skipped);
			atomic_fetch_add(&migrations, 1);
		} else {
			n = n > 16 ? 16 : n;
			/* Unchecked (the owner may be writing); must not crash. */
			int rc = uhmm_dummy_read(rnd_below(&w->rng, 2) ? devA : devB,
			                         (void *)(base + f * PS), w->buf, n, NULL);
			(void)rc;
			atomic_fetch_add(&dev_ops, 1);
		}
	}
	if (opt_no_move)
		pthread_rwlock_unlock(&r->lk);
}

static void op_fork(struct worker *w, struct region *r)
{
	size_t f, n;
	if (!pick_run(w, r, -1, 32, &f, &n))
		return;
	fflush(NULL);
	NOTE(APP_FORK, r->base + f * PS, n * PS, 0, 0);
	pid_t pid = fork();
	if (pid < 0)
		fail(w, NULL, "fork: %s", strerror(errno));
	if (pid == 0) {
		/* The child: only this thread exists; check without stdio. */
		for (size_t i = f; i < f + n; i++)
			if (memcmp(r->base + i * PS, r->shadow + i * PS, PS))
				_exit(10 + (int)(i - f) % 100);
		_exit(0);
	}
	int st = 0;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			fail(w, NULL, "waitpid: %s", strerror(errno));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		size_t bad = WIFEXITED(st) && WEXITSTATUS(st) >= 10 ? f + WEXITSTATUS(st) - 10 : f;
		fail(w, r->base + bad * PS, "fork child: %s %d (page %zu of the %zu checked differs)",
		     WIFEXITED(st) ? "exit" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st),
		     bad, n);
	}
	atomic_fetch_add(&pages_checked, n);
	atomic_fetch_add(&forks, 1);
	check_any(w, r, f, n); /* and the parent still has it */
}

struct opdef {
	const char *name;
	unsigned weight;
};

enum {
	O_CPU_WRITE, O_CPU_READ, O_MIGRATE, O_DEV_WRITE, O_DEV_READ, O_RELEASE, O_MUNMAP,
	O_REALLOC, O_MREMAP, O_MADVISE, O_RANGE_REMOVE, O_RANGE_ADD, O_DEVMEM, O_FOREIGN,
	O_FORK, O_CPU_STREAM, O__N
};

static const struct opdef ops[O__N] = {
	[O_CPU_WRITE] = { "cpu-write", 20 },     [O_CPU_READ] = { "cpu-read", 10 },
	[O_MIGRATE] = { "migrate", 25 },         [O_DEV_WRITE] = { "dev-write", 8 },
	[O_DEV_READ] = { "dev-read", 6 },        [O_RELEASE] = { "dummy-release", 1 },
	[O_MUNMAP] = { "munmap", 2 },            [O_REALLOC] = { "realloc", 2 },
	[O_MREMAP] = { "mremap", 3 },            [O_MADVISE] = { "madvise", 4 },
	[O_RANGE_REMOVE] = { "range-remove", 2 }, [O_RANGE_ADD] = { "range-add", 3 },
	[O_DEVMEM] = { "devmem", 1 },            [O_FOREIGN] = { "foreign", 20 },
	[O_FORK] = { "fork-check", 0 /* set in main */ },
	[O_CPU_STREAM] = { "cpu-stream", 0 /* set in main; last: seeds keep their meaning */ },
};
static unsigned op_weight[O__N], weight_sum;

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	for (w->op = 0; w->op < w->nops && !atomic_load(&failed); w->op++) {
		unsigned x = (unsigned)rnd_below(&w->rng, weight_sum);
		int o = 0;
		while (x >= op_weight[o])
			x -= op_weight[o++];
		struct region *r = &w->reg[rnd_below(&w->rng, REGIONS)];
		w->prevop = w->opname;
		w->opname = ops[o].name;
		w->hist[w->nhist % 16].name = ops[o].name;
		w->hist[w->nhist % 16].region = (int)(r - w->reg);
		w->hist[w->nhist % 16].base = r->base;
		w->nhist++;
		if (!r->live && o != O_DEVMEM && o != O_FOREIGN && o != O_RELEASE) {
			w->opname = "realloc";
			op_realloc(w, r);
			atomic_fetch_add(&total_ops, 1);
			continue;
		}
		switch (o) {
		case O_CPU_WRITE: op_cpu_write(w, r); break;
		case O_CPU_READ: op_cpu_read(w, r); break;
		case O_CPU_STREAM: op_cpu_stream(w, r); break;
		case O_MIGRATE: op_migrate_own(w, r); break;
		case O_DEV_WRITE: op_dev_write(w, r); break;
		case O_DEV_READ: op_dev_read(w, r); break;
		case O_RELEASE: op_release(w, r); break;
		case O_MUNMAP: op_munmap(w, r); break;
		case O_REALLOC: op_realloc(w, r); break;
		case O_MREMAP: op_mremap(w, r); break;
		case O_MADVISE: op_madvise(w, r); break;
		case O_RANGE_REMOVE: op_range_remove(w, r); break;
		case O_RANGE_ADD: op_range_add(w, r); break;
		case O_DEVMEM: op_devmem(w); break;
		case O_FOREIGN: op_foreign(w); break;
		case O_FORK: op_fork(w, r); break;
		}
		atomic_fetch_add(&total_ops, 1);
		if (opt_verbose && w->id == 0 && w->op % 10000 == 0)
			fprintf(stderr, "uhmm-stress: %lu ops\n", atomic_load(&total_ops));
	}
	return NULL;
}

/* Final full check of every live region, then tear down. */
static void final_check(struct worker *w)
{
	w->opname = "final-check";
	for (int k = 0; k < REGIONS; k++) {
		struct region *r = &w->reg[k];
		if (!r->live)
			continue;
		for (size_t i = 0; i < r->npages; i++)
			if (r->mapped[i])
				check_cpu(w, r, i, 1);
		region_release(w, r);
	}
}

/* A hang is a failure too: report where every thread is and exit 3. */
static unsigned opt_watchdog = 60;

/* On a hang: where every thread is, from /proc (a debugger would block on
 * managed memory): its comm, syscall line (number, arguments, sp, pc) and
 * kernel stack, and the mapping of libuhmm to symbolise the pc with. */
static void dump_threads(void)
{
	char path[512], buf[4096];
	snprintf(path, sizeof(path), "ls /proc/%d/task", (int)getpid());
	FILE *d = popen(path, "r");
	if (!d)
		return;
	int tid;
	while (fscanf(d, "%d", &tid) == 1) {
		const char *parts[] = { "comm", "syscall", "stack" };
		fprintf(stderr, "uhmm-stress: task %d\n", tid);
		for (int i = 0; i < 3; i++) {
			snprintf(path, sizeof(path), "/proc/%d/task/%d/%s", (int)getpid(), tid, parts[i]);
			FILE *f = fopen(path, "r");
			if (!f)
				continue;
			size_t n = fread(buf, 1, sizeof(buf) - 1, f);
			buf[n] = 0;
			fclose(f);
			fprintf(stderr, "  %s: %s", parts[i], buf);
		}
	}
	pclose(d);
	snprintf(path, sizeof(path), "grep -E 'libuhmm|uhmm-stress' /proc/%d/maps >&2", (int)getpid());
	if (system(path))
		(void)0;
	/* User stacks too, when gdb is there (frame arguments off: printing
	 * them could touch managed memory, which would block gdb). */
	if (getenv("UHMM_STRESS_PERF")) {
		/* Where the running threads spin (perf does not stop them). */
		snprintf(path, sizeof(path),
		         "perf record -q -F 999 -g -p %d -o /tmp/uhmm-stress.perf -- sleep 1 >/dev/null 2>&1; "
		         "perf report -q -i /tmp/uhmm-stress.perf --stdio --sort tid,sym -g none 2>/dev/null | head -40 >&2",
		         (int)getpid());
		if (system(path))
			(void)0;
	}
	if (getenv("UHMM_STRESS_GDB")) {
		snprintf(path, sizeof(path),
		         "timeout 60 gdb -p %d -batch -ex 'set print frame-arguments none' "
		         "-ex 'thread apply all bt 14' >&2 2>/dev/null", (int)getpid());
		if (system(path))
			(void)0;
	}
}

static void *watchdog_main(void *arg)
{
	(void)arg;
	unsigned long last = (unsigned long)-1;
	unsigned still = 0;
	for (;;) {
		sleep(1);
		unsigned long now = atomic_load(&total_ops);
		if (now != last) {
			last = now;
			still = 0;
			continue;
		}
		if (++still < opt_watchdog)
			continue;
		fprintf(stderr, "uhmm-stress: HANG: no operation completed for %u s (seed %" PRIu64 ")\n",
		        opt_watchdog, opt_seed);
		for (unsigned t = 0; t < opt_threads; t++)
			fprintf(stderr, "uhmm-stress:   thread %u at op %lu (%s)\n", t, W[t].op,
			        W[t].opname ? W[t].opname : "?");
		fflush(stderr);
		dump_threads();
#ifdef UHMM_TRACE
		uhmm_trace_dump(H, NULL); /* UHMM_TRACE_FILE: the whole ring */
#endif
		_exit(3);
	}
	return NULL;
}

#ifdef UHMM_TRACE
static void trace_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	fprintf(stderr, "uhmm-stress: SIGBUS at %p (code %d)\n", si->si_addr, si->si_code);
	uhmm_trace_dump(H, si->si_addr);
	_exit(4);
}
#endif

/* --fallback-delay: the owner's mremap, munmap and madvise get time to land
 * in the copy fallback's window (RELIABILITY.md, finding 26). */
static void fallback_delay(int point, uintptr_t addr, size_t len)
{
	(void)point, (void)addr, (void)len;
	usleep(opt_fallback_delay);
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: uhmm-stress [--seed S] [--ops N] [--threads T] [--size BYTES]\n"
	        "                   [--mode thread|sigbus|auto] [--no-move] [--fork-weight W]\n"
	        "                   [--stream-weight W (whole-region sequential reads, default 0)]\n"
	        "                   [--skip OP[,OP...]] (e.g. --skip mremap,madvise)\n"
	        "                   [--watchdog SECONDS (0 = off, default 60)] [-v]\n"
	        "                   [--mremap-back (each mremap moves the region away and back\n"
	        "                    over its first address)]\n"
	        "                   [--copy-device (devices A and B are copy devices, not\n"
	        "                    HOST_BACKED: the path of a real device)]\n"
	        "                   [--fallback-delay US (the copy fallback sleeps US µs before\n"
	        "                    and after its discard, out of the gate: widens that window)]\n"
	        "  --ops N      operations in all (default 100000), split over the threads\n"
	        "  --size B     bytes of memory each thread owns (default 1 MiB, in %d regions)\n",
	        REGIONS);
	exit(2);
}

static size_t parse_size(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 0);
	switch (*end) {
	case 'k': case 'K': v <<= 10; break;
	case 'm': case 'M': v <<= 20; break;
	case 'g': case 'G': v <<= 30; break;
	case 0: break;
	default: usage();
	}
	return (size_t)v;
}

int main(int argc, char **argv)
{
	PS = (size_t)sysconf(_SC_PAGESIZE);
	bool have_seed = false;
	unsigned fork_weight = 1, stream_weight = 0;
	const char *skip = "";
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--seed") && v) {
			opt_seed = strtoull(v, NULL, 0), have_seed = true, i++;
		} else if (!strcmp(a, "--ops") && v) {
			opt_ops = strtoul(v, NULL, 0), i++;
		} else if (!strcmp(a, "--threads") && v) {
			opt_threads = (unsigned)strtoul(v, NULL, 0), i++;
		} else if (!strcmp(a, "--size") && v) {
			opt_size = parse_size(v), i++;
		} else if (!strcmp(a, "--watchdog") && v) {
			opt_watchdog = (unsigned)strtoul(v, NULL, 0), i++;
		} else if (!strcmp(a, "--fork-weight") && v) {
			fork_weight = (unsigned)strtoul(v, NULL, 0), i++;
		} else if (!strcmp(a, "--stream-weight") && v) {
			stream_weight = (unsigned)strtoul(v, NULL, 0), i++;
		} else if (!strcmp(a, "--mode") && v) {
			if (!strcmp(v, "thread"))
				opt_mode = UHMM_FAULT_THREAD;
			else if (!strcmp(v, "sigbus"))
				opt_mode = UHMM_FAULT_SIGBUS;
			else if (!strcmp(v, "auto"))
				opt_mode = UHMM_FAULT_AUTO;
			else
				usage();
			i++;
		} else if (!strcmp(a, "--skip") && v) {
			skip = v, i++; /* comma-separated operation names never chosen */
		} else if (!strcmp(a, "--fallback-delay") && v) {
			opt_fallback_delay = (unsigned)strtoul(v, NULL, 0), i++;
		} else if (!strcmp(a, "--mremap-back")) {
			opt_mremap_back = true;
		} else if (!strcmp(a, "--no-move")) {
			opt_no_move = true;
		} else if (!strcmp(a, "--copy-device")) {
			opt_copy_device = true;
		} else if (!strcmp(a, "-v")) {
			opt_verbose = true;
		} else {
			usage();
		}
	}
	if (!have_seed) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid();
		opt_seed = splitmix(&x) % 1000000000ULL;
	}
	if (opt_threads < 1 || opt_threads > 64 || opt_ops < 1)
		usage();
	max_pages = opt_size / PS / REGIONS;
	if (max_pages < 1)
		max_pages = 1;
	for (int o = 0; o < O__N; o++) {
		op_weight[o] = o == O_FORK ? fork_weight : o == O_CPU_STREAM ? stream_weight : ops[o].weight;
		if (opt_threads == 1 && o == O_FOREIGN)
			op_weight[o] = ops[o].weight; /* own regions, still fine */
		size_t nl = strlen(ops[o].name);
		for (const char *q = skip; (q = strstr(q, ops[o].name)); q += nl)
			if ((q == skip || q[-1] == ',') && (q[nl] == 0 || q[nl] == ','))
				op_weight[o] = 0;
		weight_sum += op_weight[o];
	}

#ifdef UHMM_TRACE
	/* A SIGBUS uhmm does not resolve comes here (chained): dump it. */
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = trace_sigbus;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGBUS, &sa, NULL);
#endif
	if (opt_fallback_delay)
		atomic_store(&debug_hook, fallback_delay);
	struct uhmm_options uo = UHMM_OPTIONS_INIT;
	memset(&uo, 0, sizeof(uo));
	uo.sz = sizeof(uo);
	uo.fault_mode = opt_mode;
	uo.flags = opt_no_move ? UHMM_OPT_NO_MOVE : 0;
	int rc = uhmm_open(&uo, &H);
	if (rc) {
		fprintf(stderr, "uhmm-stress: uhmm_open: %s\n", strerror(-rc));
		return 1;
	}
	struct uhmm_dummy_options dopt = UHMM_DUMMY_OPTIONS_INIT;
	dopt.flags = opt_copy_device ? UHMM_DUMMY_COPY_DEVICE : 0;
	if ((rc = uhmm_dummy_create(H, &dopt, &devA)) || (rc = uhmm_dummy_create(H, &dopt, &devB))) {
		fprintf(stderr, "uhmm-stress: uhmm_dummy_create: %s\n", strerror(-rc));
		return 1;
	}
	printf("uhmm-stress: seed %" PRIu64 ", %lu ops, %u threads, %zu bytes per thread, mode %s%s%s\n",
	       opt_seed, opt_ops, opt_threads, opt_size,
	       uhmm_fault_mode(H) == UHMM_FAULT_SIGBUS ? "sigbus" : "thread",
	       opt_no_move ? ", no move" : "", opt_copy_device ? ", copy devices" : "");
	fflush(stdout);

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	W = calloc(opt_threads, sizeof(*W));
	if (!W)
		return 1;
	for (unsigned t = 0; t < opt_threads; t++) {
		struct worker *w = &W[t];
		uint64_t x = opt_seed * 1000003ULL + t;
		w->id = t;
		w->rng.s = splitmix(&x) | 1;
		w->nops = opt_ops / opt_threads + (t < opt_ops % opt_threads);
		w->opname = "setup";
		w->buf = malloc(max_pages * PS);
		for (int k = 0; k < REGIONS; k++) {
			struct region *r = &w->reg[k];
			pthread_rwlock_init(&r->lk, NULL);
			r->shadow = malloc(max_pages * PS);
			r->mapped = calloc(max_pages, 1);
			r->managed = calloc(max_pages, 1);
			if (!w->buf || !r->shadow || !r->mapped || !r->managed)
				return 1;
			region_alloc(w, r);
		}
	}
	pthread_t wd;
	if (opt_watchdog && pthread_create(&wd, NULL, watchdog_main, NULL) == 0)
		pthread_detach(wd);
	for (unsigned t = 0; t < opt_threads; t++)
		if (pthread_create(&W[t].th, NULL, worker_main, &W[t])) {
			fprintf(stderr, "uhmm-stress: pthread_create failed\n");
			return 1;
		}
	for (unsigned t = 0; t < opt_threads; t++)
		pthread_join(W[t].th, NULL);
	for (unsigned t = 0; t < opt_threads; t++)
		final_check(&W[t]);
	clock_gettime(CLOCK_MONOTONIC, &t1);

	struct uhmm_stats st = UHMM_STATS_INIT;
	memset(&st, 0, sizeof(st));
	st.sz = sizeof(st);
	uhmm_stats_get(H, &st);
	while (ndevmem > 0) {
		rc = uhmm_devmem_remove(devmems[--ndevmem]);
		if (rc) {
			fprintf(stderr, "uhmm-stress: uhmm_devmem_remove at exit = %d\n", rc);
			atomic_fetch_add(&mismatches, 1);
		}
	}
	rc = uhmm_close(H);
	if (rc) {
		fprintf(stderr, "uhmm-stress: uhmm_close = %d\n", rc);
		atomic_fetch_add(&mismatches, 1);
	}
	double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("uhmm-stress: to device %" PRIu64 ", to system %" PRIu64 ", cpu faults %" PRIu64
	       ", skipped %" PRIu64 ", events %" PRIu64 ", deferred faults %" PRIu64
	       ", fault-ahead %" PRIu64 ", staged %" PRIu64 ", fallback %" PRIu64 ", unshared %" PRIu64
	       "\n",
	       st.pages_to_device, st.pages_to_system, st.cpu_faults, st.pages_skipped, st.events,
	       st.deferred_faults, st.pages_ahead, st.pages_staged, st.fallback_pages,
	       st.pages_unshared);
	/* The path the mode is about was taken (a silent fallback would pass
	 * every check and test nothing of it). */
	struct uhmm_sysinfo si = UHMM_SYSINFO_INIT;
	bool have_move = uhmm_sysinfo_get(&si) == 0 && (si.caps & UHMM_SYS_MOVE);
	if (opt_copy_device && !opt_no_move && have_move && st.pages_to_device &&
	    st.pages_staged == 0) {
		fprintf(stderr, "uhmm-stress: copy devices, UFFDIO_MOVE: no page went through staging\n");
		atomic_fetch_add(&mismatches, 1);
	}
	printf("uhmm-stress: migrate calls %lu, device ops %lu, cpu writes %lu, madvise %lu, munmap %lu,"
	       " mremap %lu, range remove %lu / add %lu, realloc %lu, devmem add %lu / remove %lu,"
	       " forks %lu, release -EBUSY %lu\n",
	       atomic_load(&migrations), atomic_load(&dev_ops), atomic_load(&cpu_writes),
	       atomic_load(&madvises), atomic_load(&munmaps), atomic_load(&mremaps),
	       atomic_load(&range_removes), atomic_load(&range_adds), atomic_load(&reallocs),
	       atomic_load(&devmem_adds), atomic_load(&devmem_removes), atomic_load(&forks),
	       atomic_load(&release_busy));
	printf("uhmm-stress: seed %" PRIu64 ": %lu operations, %lu pages checked, %lu mismatches"
	       " (%u threads, %.1f s)\n",
	       opt_seed, atomic_load(&total_ops), atomic_load(&pages_checked),
	       atomic_load(&mismatches), opt_threads, secs);
	for (unsigned t = 0; t < opt_threads; t++) {
		free(W[t].buf);
		for (int k = 0; k < REGIONS; k++) {
			pthread_rwlock_destroy(&W[t].reg[k].lk);
			free(W[t].reg[k].shadow);
			free(W[t].reg[k].mapped);
			free(W[t].reg[k].managed);
		}
	}
	free(W);
	return atomic_load(&mismatches) ? 1 : 0;
}
