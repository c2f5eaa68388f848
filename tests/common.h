/* SPDX-License-Identifier: MIT */
/*
 * Shared helpers of the uhmm test suite.
 *
 * Every test opens and closes its own context inside the test function:
 * cmocka installs its own SIGBUS/SIGSEGV handlers around each test and
 * restores them afterwards, and uhmm installs its SIGBUS handler in
 * uhmm_open() (SIGBUS mode), so a context opened in a group fixture would
 * lose its handler.  Tests that take CPU faults are registered twice, once
 * per fault mode (TEST_BOTH), the mode coming in through the cmocka state.
 * A context a failed test left open is closed by the teardown.
 */
#ifndef UHMM_TESTS_COMMON_H
#define UHMM_TESTS_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "uhmm.h"

/* ------------------------------------------------------------------ */
/* Page size                                                            */
/* ------------------------------------------------------------------ */

static inline size_t PS(void)
{
	static size_t ps;
	if (!ps)
		ps = (size_t)sysconf(_SC_PAGESIZE);
	return ps;
}

static inline void *page_at(void *base, size_t i)
{
	return (char *)base + i * PS();
}

/* ------------------------------------------------------------------ */
/* Fault modes                                                          */
/* ------------------------------------------------------------------ */

struct test_mode {
	enum uhmm_fault_mode mode;
};

static struct test_mode mode_thread __attribute__((unused)) = { UHMM_FAULT_THREAD };
static struct test_mode mode_sigbus __attribute__((unused)) = { UHMM_FAULT_SIGBUS };

static inline enum uhmm_fault_mode state_mode(void **state)
{
	if (!state || !*state)
		return UHMM_FAULT_THREAD;
	return ((const struct test_mode *)*state)->mode;
}

/* Contexts opened by the running test (closed by the teardown on failure). */
#define T_MAX_CTX 8
static struct uhmm *t_ctx[T_MAX_CTX];

static inline void t_track(struct uhmm *h)
{
	for (int i = 0; i < T_MAX_CTX; i++)
		if (!t_ctx[i]) {
			t_ctx[i] = h;
			return;
		}
}

static inline void t_untrack(struct uhmm *h)
{
	for (int i = 0; i < T_MAX_CTX; i++)
		if (t_ctx[i] == h)
			t_ctx[i] = NULL;
}

/*
 * Open a context in the mode the test state selects; *base (may be NULL)
 * gives the other options.
 */
static inline struct uhmm *t_open_opts(void **state, const struct uhmm_options *base)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	struct uhmm *h = NULL;

	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	if (base)
		o = *base;
	o.fault_mode = state_mode(state);
	int rc = uhmm_open(&o, &h);
	assert_int_equal(rc, 0);
	assert_non_null(h);
	t_track(h);
	assert_int_equal(uhmm_fault_mode(h), o.fault_mode);
	return h;
}

/* ThreadSanitizer cannot run a forked child of a threaded process that
 * starts threads itself (as a child opening its own context does). */
#if defined(__SANITIZE_THREAD__)
#define T_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define T_TSAN 1
#endif
#endif
/* Sanitizer runtimes map memory of their own as they go. */
#if defined(T_TSAN) || defined(__SANITIZE_ADDRESS__)
#define T_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define T_SANITIZER 1
#endif
#endif

#ifdef T_TSAN
#define SKIP_UNDER_TSAN_FORK() skip()
#else
#define SKIP_UNDER_TSAN_FORK() ((void)0)
#endif

static inline struct uhmm *t_open(void **state)
{
	return t_open_opts(state, NULL);
}

/* Open with fault-around off: exactly one page comes back per CPU fault. */
static inline struct uhmm *t_open_nofa(void **state)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.fault_around = 1;
	return t_open_opts(state, &o);
}

static inline void t_close(struct uhmm *h)
{
	t_untrack(h);
	assert_int_equal(uhmm_close(h), 0);
}

static int t_teardown(void **state) __attribute__((unused));
static int t_teardown(void **state)
{
	(void)state;
	for (int i = 0; i < T_MAX_CTX; i++)
		if (t_ctx[i]) {
			uhmm_close(t_ctx[i]);
			t_ctx[i] = NULL;
		}
	return 0;
}

/* Register f once per fault mode. */
#define TEST_BOTH(f)                                                       \
	{ #f "/thread", f, NULL, t_teardown, &mode_thread },               \
	{ #f "/sigbus", f, NULL, t_teardown, &mode_sigbus }
/* Register f once (no CPU fault involved, or mode-independent). */
#define TEST_ONE(f) { #f, f, NULL, t_teardown, &mode_thread }

/* ------------------------------------------------------------------ */
/* Memory helpers                                                       */
/* ------------------------------------------------------------------ */

static inline void *t_alloc(struct uhmm *h, size_t npages)
{
	void *p = NULL;
	assert_int_equal(uhmm_alloc(h, npages * PS(), &p), 0);
	assert_non_null(p);
	assert_int_equal((uintptr_t)p % PS(), 0);
	return p;
}

/* Plain private anonymous memory (not managed). */
static inline void *t_mmap(size_t npages)
{
	void *p = mmap(NULL, npages * PS(), PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	return p;
}

/* ------------------------------------------------------------------ */
/* Patterns: every 64-bit word of every page distinct, per seed.        */
/* ------------------------------------------------------------------ */

static inline uint64_t pat(unsigned seed, size_t page, size_t word)
{
	uint64_t v = 0x5bd1e9955bd1e995ULL;
	v ^= (uint64_t)(seed + 1) * 0x9E3779B97F4A7C15ULL;
	v ^= (uint64_t)(page + 1) * 0xC2B2AE3D27D4EB4FULL;
	v += (uint64_t)word * 0x165667B19E3779F9ULL;
	return v | 1; /* never zero: a zero-filled page never matches */
}

static inline size_t words_per_page(void)
{
	return PS() / sizeof(uint64_t);
}

/* Fill pages [first, first+n) of base; page i gets pat(seed, i, .). */
static inline void fill_pages(void *base, size_t first, size_t n, unsigned seed)
{
	size_t wpp = words_per_page();
	for (size_t i = first; i < first + n; i++) {
		uint64_t *w = (uint64_t *)page_at(base, i);
		for (size_t j = 0; j < wpp; j++)
			w[j] = pat(seed, i, j);
	}
}

/* Fill a plain buffer as pages [first, first+n) would be filled. */
static inline void fill_buf(void *buf, size_t first, size_t n, unsigned seed)
{
	size_t wpp = words_per_page();
	for (size_t i = 0; i < n; i++) {
		uint64_t *w = (uint64_t *)page_at(buf, i);
		for (size_t j = 0; j < wpp; j++)
			w[j] = pat(seed, first + i, j);
	}
}

/*
 * Check pages [first, first+n) of base against seed.  Returns -1 when all
 * match, else the first bad page index (and reports it).
 */
static inline long check_pages(const void *base, size_t first, size_t n, unsigned seed)
{
	size_t wpp = words_per_page();
	for (size_t i = first; i < first + n; i++) {
		const volatile uint64_t *w =
			(const volatile uint64_t *)((const char *)base + i * PS());
		for (size_t j = 0; j < wpp; j++) {
			uint64_t got = w[j], exp = pat(seed, i, j);
			if (got != exp) {
				print_error("page %zu word %zu: got %#" PRIx64 " expected %#" PRIx64
				            " (seed %u)\n", i, j, got, exp, seed);
				return (long)i;
			}
		}
	}
	return -1;
}

/* Same for a plain buffer holding pages [first, first+n). */
static inline long check_buf(const void *buf, size_t first, size_t n, unsigned seed)
{
	size_t wpp = words_per_page();
	for (size_t i = 0; i < n; i++) {
		const uint64_t *w = (const uint64_t *)((const char *)buf + i * PS());
		for (size_t j = 0; j < wpp; j++) {
			uint64_t exp = pat(seed, first + i, j);
			if (w[j] != exp) {
				print_error("buf page %zu word %zu: got %#" PRIx64 " expected %#" PRIx64
				            "\n", first + i, j, w[j], exp);
				return (long)(first + i);
			}
		}
	}
	return -1;
}

static inline long check_byte(const void *base, size_t first, size_t n, unsigned char b)
{
	for (size_t i = first; i < first + n; i++) {
		const volatile unsigned char *c =
			(const volatile unsigned char *)((const char *)base + i * PS());
		for (size_t j = 0; j < PS(); j++)
			if (c[j] != b) {
				print_error("page %zu byte %zu: got %#x expected %#x\n", i, j,
				            (unsigned)c[j], (unsigned)b);
				return (long)i;
			}
	}
	return -1;
}

static inline long check_zero(const void *base, size_t first, size_t n)
{
	return check_byte(base, first, n, 0);
}

#define assert_pages(base, first, n, seed) \
	assert_int_equal(check_pages((base), (first), (n), (seed)), -1)
#define assert_buf(buf, first, n, seed) \
	assert_int_equal(check_buf((buf), (first), (n), (seed)), -1)
#define assert_zero_pages(base, first, n) \
	assert_int_equal(check_zero((base), (first), (n)), -1)

/* Touch (read one word of) page i: one CPU fault if it is not present. */
static inline uint64_t touch_read(const void *base, size_t i)
{
	return *(const volatile uint64_t *)((const char *)base + i * PS());
}

/* ------------------------------------------------------------------ */
/* State helpers                                                        */
/* ------------------------------------------------------------------ */

/* Assert pages [first, first+n) of base are all in state st on device dev. */
#define assert_states(h, base, first, n, st, dev)                                   \
	do {                                                                        \
		size_t n__ = (n);                                                   \
		struct uhmm_page_info *inf__ = calloc(n__, sizeof(*inf__));         \
		assert_non_null(inf__);                                             \
		assert_int_equal(uhmm_query((h), page_at((base), (first)), n__, inf__), 0); \
		for (size_t i__ = 0; i__ < n__; i__++) {                            \
			if (inf__[i__].state != (st) ||                             \
			    inf__[i__].device != (dev)) {                           \
				print_error("page %zu: state %d device %p, expected %d %p\n", \
				            (size_t)(first) + i__, (int)inf__[i__].state, \
				            (void *)inf__[i__].device, (int)(st),   \
				            (void *)(dev));                         \
				free(inf__);                                        \
				fail();                                             \
			}                                                           \
		}                                                                   \
		free(inf__);                                                        \
	} while (0)

/* Count pages of [first, first+n) in state st. */
static inline size_t count_state(struct uhmm *h, void *base, size_t first, size_t n,
                                 enum uhmm_state st)
{
	struct uhmm_page_info *inf = calloc(n, sizeof(*inf));
	size_t c = 0;
	assert_non_null(inf);
	assert_int_equal(uhmm_query(h, page_at(base, first), n, inf), 0);
	for (size_t i = 0; i < n; i++)
		c += inf[i].state == st;
	free(inf);
	return c;
}

static inline struct uhmm_stats t_stats(struct uhmm *h)
{
	struct uhmm_stats st = UHMM_STATS_INIT;
	memset(&st, 0, sizeof(st));
	st.sz = sizeof(st);
	assert_int_equal(uhmm_stats_get(h, &st), 0);
	return st;
}

static inline struct uhmm_device *t_dummy(struct uhmm *h)
{
	struct uhmm_device *d = NULL;
	assert_int_equal(uhmm_dummy_create(h, NULL, &d), 0);
	assert_non_null(d);
	return d;
}

/* Migrate and assert the result is (migrated, skipped). */
#define assert_migrate(h, addr, len, to, mig, skip)                                 \
	do {                                                                        \
		struct uhmm_migrate_result r__ = { 12345, 12345 };                  \
		assert_int_equal(uhmm_migrate((h), (addr), (len), (to), &r__), 0);  \
		assert_int_equal(r__.migrated, (mig));                              \
		assert_int_equal(r__.skipped, (skip));                              \
	} while (0)

#endif /* UHMM_TESTS_COMMON_H */
