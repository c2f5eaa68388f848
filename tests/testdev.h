/* SPDX-License-Identifier: MIT */
/*
 * Custom test devices built on the public backend interface:
 *  - host-backed (UHMM_DEVICE_HOST_BACKED): uhmm provides the memory;
 *    the test only counts page_free / destroy calls;
 *  - copy device (flags 0): device memory is a malloc'd array of pages
 *    indexed by page index; copy_to_device / copy_from_device copy in and
 *    out of it and can be told to fail.
 * One devmem block per device (tdev->m); callbacks record anything that
 * does not fit that contract in tdev->bad.  Callbacks only use atomics and
 * memcpy (they may run in a signal handler).
 */
#ifndef UHMM_TESTS_TESTDEV_H
#define UHMM_TESTS_TESTDEV_H

#include <stdatomic.h>

#include "common.h"

enum tdev_fail {
	TDEV_OK = 0,
	TDEV_FAIL_ALWAYS = 1,
	TDEV_FAIL_ODD = 2, /* every other call (1st, 3rd, ...) fails */
};

struct tdev {
	struct uhmm_device *dev;
	struct uhmm_devmem *m;
	size_t npages;
	bool host_backed;
	unsigned char *store;      /* copy device: npages pages */
	atomic_uint *freed;        /* page_free calls per index */
	atomic_ulong nfree;        /* page_free calls in all */
	atomic_ulong to_calls, to_pages;     /* successful copy_to_device */
	atomic_ulong from_calls, from_pages; /* successful copy_from_device */
	atomic_ulong to_tries, from_tries;   /* all calls */
	atomic_ulong ndestroy;
	atomic_ulong bad;          /* contract violations seen by callbacks */
	atomic_int fail_to, fail_from;
};

static inline struct tdev *tdev_of(struct uhmm_device *d)
{
	return (struct tdev *)uhmm_device_priv(d);
}

static inline bool tdev_should_fail(atomic_int *mode, atomic_ulong *tries)
{
	unsigned long n = atomic_fetch_add(tries, 1);
	switch (atomic_load(mode)) {
	case TDEV_FAIL_ALWAYS: return true;
	case TDEV_FAIL_ODD: return (n % 2) == 0;
	default: return false;
	}
}

static inline int tdev_copy_to(struct uhmm_device *d, struct uhmm_devmem *m,
                               const size_t *idx, const void *src, size_t npages)
{
	struct tdev *t = tdev_of(d);
	if (!t)
		return -EINVAL;
	if (m != t->m || !t->store || !idx || !src) {
		atomic_fetch_add(&t->bad, 1);
		return -EINVAL;
	}
	if (tdev_should_fail(&t->fail_to, &t->to_tries))
		return -EIO;
	for (size_t i = 0; i < npages; i++) {
		if (idx[i] >= t->npages) {
			atomic_fetch_add(&t->bad, 1);
			return -EINVAL;
		}
		memcpy(t->store + idx[i] * PS(), (const char *)src + i * PS(), PS());
	}
	atomic_fetch_add(&t->to_calls, 1);
	atomic_fetch_add(&t->to_pages, npages);
	return 0;
}

static inline int tdev_copy_from(struct uhmm_device *d, void *dst, struct uhmm_devmem *m,
                                 const size_t *idx, size_t npages)
{
	struct tdev *t = tdev_of(d);
	if (!t)
		return -EINVAL;
	if (m != t->m || !t->store || !idx || !dst) {
		atomic_fetch_add(&t->bad, 1);
		return -EINVAL;
	}
	if (tdev_should_fail(&t->fail_from, &t->from_tries))
		return -EIO;
	for (size_t i = 0; i < npages; i++) {
		if (idx[i] >= t->npages) {
			atomic_fetch_add(&t->bad, 1);
			return -EINVAL;
		}
		memcpy((char *)dst + i * PS(), t->store + idx[i] * PS(), PS());
	}
	atomic_fetch_add(&t->from_calls, 1);
	atomic_fetch_add(&t->from_pages, npages);
	return 0;
}

static inline void tdev_page_free(struct uhmm_device *d, struct uhmm_devmem *m, size_t idx)
{
	struct tdev *t = tdev_of(d);
	if (!t || m != t->m || idx >= t->npages) {
		if (t)
			atomic_fetch_add(&t->bad, 1);
		return;
	}
	/* The device outlives every page_free (uhmm_device_destroy). */
	if (atomic_load(&t->ndestroy))
		atomic_fetch_add(&t->bad, 1);
	atomic_fetch_add(&t->freed[idx], 1);
	atomic_fetch_add(&t->nfree, 1);
}

static inline void tdev_destroy_cb(struct uhmm_device *d)
{
	struct tdev *t = tdev_of(d);
	if (t)
		atomic_fetch_add(&t->ndestroy, 1);
}

/*
 * Create a device on h with one devmem block of npages pages
 * (ALLOW_MIGRATION | UNADDRESSABLE).  host_backed selects the kind.
 */
static inline struct tdev *tdev_create(struct uhmm *h, bool host_backed, size_t npages)
{
	struct tdev *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	t->npages = npages;
	t->host_backed = host_backed;
	t->freed = calloc(npages, sizeof(*t->freed));
	assert_non_null(t->freed);
	if (!host_backed) {
		t->store = malloc(npages * PS());
		assert_non_null(t->store);
		memset(t->store, 0xEE, npages * PS());
	}
	struct uhmm_device_ops ops;
	memset(&ops, 0, sizeof(ops));
	ops.page_free = tdev_page_free;
	ops.destroy = tdev_destroy_cb;
	if (!host_backed) {
		ops.copy_to_device = tdev_copy_to;
		ops.copy_from_device = tdev_copy_from;
	}
	assert_int_equal(uhmm_device_create(h, host_backed ? "test-host" : "test-copy", &ops,
	                                    host_backed ? UHMM_DEVICE_HOST_BACKED : 0, t,
	                                    &t->dev), 0);
	assert_non_null(t->dev);
	assert_ptr_equal(uhmm_device_priv(t->dev), t);
	assert_ptr_equal(uhmm_device_context(t->dev), h);
	assert_int_equal(uhmm_devmem_add(t->dev, npages * PS(),
	                                 UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE,
	                                 &t->m), 0);
	assert_non_null(t->m);
	assert_int_equal(uhmm_devmem_npages(t->m), npages);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_ptr_equal(uhmm_devmem_device(t->m), t->dev);
	return t;
}

/* Free the test-side state (after the device is destroyed or h closed). */
static inline void tdev_free(struct tdev *t)
{
	if (!t)
		return;
	free(t->freed);
	free(t->store);
	free(t);
}

static inline void tdev_reset_counts(struct tdev *t)
{
	for (size_t i = 0; i < t->npages; i++)
		atomic_store(&t->freed[i], 0);
	atomic_store(&t->nfree, 0);
}

/*
 * page_free was called exactly `total` times since the last reset, never
 * twice for one index.
 */
#define assert_freed_once(t, total)                                                 \
	do {                                                                        \
		unsigned long sum__ = 0;                                            \
		for (size_t i__ = 0; i__ < (t)->npages; i__++) {                    \
			unsigned c__ = atomic_load(&(t)->freed[i__]);               \
			if (c__ > 1)                                                \
				print_error("page_free(idx %zu) called %u times\n", \
				            i__, c__);                              \
			assert_true(c__ <= 1);                                      \
			sum__ += c__;                                               \
		}                                                                   \
		assert_int_equal(sum__, (total));                                   \
		assert_int_equal(atomic_load(&(t)->nfree), (total));                \
		assert_int_equal(atomic_load(&(t)->bad), 0);                        \
	} while (0)

/* Device page holding data: host address (host-backed) or store slot. */
static inline const void *tdev_page(struct tdev *t, size_t idx)
{
	if (t->host_backed) {
		/* Only pages present in the host pool: uhmm may keep the pool
		 * registered with its userfaultfd, where an absent page faults. */
		void *a = uhmm_devmem_host_addr(t->m, idx);
		unsigned char vec = 0;
		if (!a || mincore(a, PS(), &vec) != 0 || !(vec & 1))
			return NULL;
		return a;
	}
	return t->store + idx * PS();
}

/*
 * Each of pages [0, n) with pattern `seed` is held by exactly one device
 * page (whose full contents match).  Returns the number of pattern pages
 * found exactly once.
 */
static inline size_t tdev_count_pattern_pages(struct tdev *t, size_t n, unsigned seed)
{
	unsigned *seen = calloc(n, sizeof(*seen));
	size_t wpp = words_per_page(), ok = 0;
	assert_non_null(seen);
	for (size_t d = 0; d < t->npages; d++) {
		const uint64_t *w = (const uint64_t *)tdev_page(t, d);
		if (!w)
			continue;
		for (size_t i = 0; i < n; i++) {
			if (w[0] != pat(seed, i, 0))
				continue;
			size_t j;
			for (j = 1; j < wpp; j++)
				if (w[j] != pat(seed, i, j))
					break;
			if (j == wpp)
				seen[i]++;
			break;
		}
	}
	for (size_t i = 0; i < n; i++)
		ok += seen[i] == 1;
	free(seen);
	return ok;
}

#endif /* UHMM_TESTS_TESTDEV_H */
