/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the kernel-HMM scenario tests (tests/hmm/):
 *  - an invalidation log a test device's mirror fills from its invalidate
 *    callback, probing watched pages *inside* the callback (state through
 *    the lock-free uhmm_query, CPU residency through mincore, and, when
 *    asked, whether the page is still readable / writable by the process
 *    through process_vm_readv/writev) so a test can tell that the callback
 *    ran before the change became visible;
 *  - child process helpers for the fork scenarios (the child reports
 *    through its exit status; no cmocka in the child).
 * The callback only uses atomics and system calls (it may run in a SIGBUS
 * handler or on uhmm's service thread, with page locks held).
 */
#ifndef UHMM_TESTS_HMM_H
#define UHMM_TESTS_HMM_H

#include <pthread.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>

#include "testdev.h"

#define ILOG_MAX   1024
#define ILOG_WATCH 4

struct ilog_probe {
	int qrc;                   /* uhmm_query's return */
	struct uhmm_page_info qi;  /* its state */
	int resident;              /* mincore: 1 mapped, 0 not, -errno */
	int readable, writable;    /* process_vm_readv/writev (probe_rw only): 1 ok, 0 failed, -1 not tried */
	uint64_t word0;            /* first word read (readable == 1) */
	uint64_t host_word0;       /* first word of watch_host[] (if set and present) */
	int host_present;
};

struct ilog_ent {
	uintptr_t start, end;
	enum uhmm_event ev;
	struct ilog_probe p[ILOG_WATCH];
	atomic_int ready; /* set (release) once the entry is filled in */
};

struct ilog {
	struct uhmm *h;
	atomic_uint n;
	/* Pages to probe inside the callback (0 = unused slot). */
	uintptr_t watch[ILOG_WATCH];
	/* Host address of a device page to read inside the callback. */
	const void *watch_host[ILOG_WATCH];
	bool probe_rw; /* also try process_vm_readv/writev on resident watched pages */
	struct ilog_ent e[ILOG_MAX];
};

static inline int ilog_resident(uintptr_t a)
{
	unsigned char vec = 0;
	if (mincore((void *)a, PS(), &vec) != 0)
		return -errno;
	return vec & 1;
}

static void ilog_invalidate(struct uhmm_mirror *m, uintptr_t start, uintptr_t end,
                            enum uhmm_event ev)
{
	struct ilog *l = uhmm_mirror_priv(m);
	unsigned i = atomic_fetch_add(&l->n, 1);
	if (i >= ILOG_MAX)
		return;
	struct ilog_ent *e = &l->e[i];
	e->start = start;
	e->end = end;
	e->ev = ev;
	for (int w = 0; w < ILOG_WATCH; w++) {
		struct ilog_probe *p = &e->p[w];
		uintptr_t a = l->watch[w];
		p->readable = p->writable = -1;
		if (!a || a < start || a >= end)
			continue;
		p->qrc = uhmm_query(l->h, (const void *)a, 1, &p->qi);
		p->resident = ilog_resident(a);
		/* Only a page mapped right now is touched: a missing managed page
		 * would be a userfault, and the caller may hold its lock. */
		if (l->probe_rw && p->resident == 1) {
			uint64_t w0 = 0;
			struct iovec lo = { &w0, sizeof(w0) }, re = { (void *)a, sizeof(w0) };
			p->readable = process_vm_readv(getpid(), &lo, 1, &re, 1, 0) ==
			              (ssize_t)sizeof(w0);
			if (p->readable) {
				p->word0 = w0;
				p->writable = process_vm_writev(getpid(), &lo, 1, &re, 1, 0) ==
				              (ssize_t)sizeof(w0);
			}
		}
		const void *ha = l->watch_host[w];
		if (ha) {
			p->host_present = ilog_resident((uintptr_t)ha);
			if (p->host_present == 1)
				p->host_word0 = *(const volatile uint64_t *)ha;
		}
	}
	/* Readers (another thread, for kernel-reported events) see the entry
	 * only once it is complete. */
	atomic_store_explicit(&e->ready, 1, memory_order_release);
}

static inline struct ilog *ilog_new(struct uhmm *h)
{
	struct ilog *l = calloc(1, sizeof(*l));
	assert_non_null(l);
	l->h = h;
	return l;
}

/* Register l as the mirror of t's device. */
static inline struct uhmm_mirror *ilog_mirror(struct tdev *t, struct ilog *l)
{
	struct uhmm_mirror_ops ops;
	struct uhmm_mirror *m = NULL;
	memset(&ops, 0, sizeof(ops));
	ops.invalidate = ilog_invalidate;
	assert_int_equal(uhmm_mirror_register(t->dev, &ops, l, &m), 0);
	assert_non_null(m);
	return m;
}

/* Index of the first logged event ev covering [a, b) at or after `from`, or -1. */
static inline int ilog_find_from(struct ilog *l, unsigned from, enum uhmm_event ev,
                                 const void *a, const void *b)
{
	unsigned n = atomic_load(&l->n);
	for (unsigned i = from; i < n && i < ILOG_MAX; i++)
		if (atomic_load_explicit(&l->e[i].ready, memory_order_acquire) &&
		    l->e[i].ev == ev && l->e[i].start <= (uintptr_t)a && l->e[i].end >= (uintptr_t)b)
			return (int)i;
	return -1;
}

static inline int ilog_find(struct ilog *l, enum uhmm_event ev, const void *a, const void *b)
{
	return ilog_find_from(l, 0, ev, a, b);
}

/* Index of the first logged event ev for exactly [a, b) at or after from, or -1. */
static inline int ilog_find_exact(struct ilog *l, unsigned from, enum uhmm_event ev,
                                  const void *a, const void *b)
{
	unsigned n = atomic_load(&l->n);
	for (unsigned i = from; i < n && i < ILOG_MAX; i++)
		if (l->e[i].ev == ev && l->e[i].start == (uintptr_t)a &&
		    l->e[i].end == (uintptr_t)b)
			return (int)i;
	return -1;
}

static inline void ms_sleep(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/*
 * Kernel-reported changes (munmap, madvise, mremap) reach uhmm as
 * userfaultfd events that the system call waits to be *read*, not handled:
 * wait (bounded, 5 s) for the callback.
 */
static inline int ilog_wait(struct ilog *l, unsigned from, enum uhmm_event ev, const void *a,
                            const void *b)
{
	int i;
	for (int k = 0; k < 5000 && (i = ilog_find_from(l, from, ev, a, b)) < 0; k++)
		ms_sleep(1);
	return ilog_find_from(l, from, ev, a, b);
}

static inline void ilog_print(struct ilog *l)
{
	unsigned n = atomic_load(&l->n);
	for (unsigned i = 0; i < n && i < ILOG_MAX; i++)
		print_message("  inval %u: [%#lx, %#lx) ev %d\n", i, (unsigned long)l->e[i].start,
		              (unsigned long)l->e[i].end, (int)l->e[i].ev);
}

/* Poll (bounded, 5 s) until uhmm_query of page a gives rc / state. */
static inline bool wait_query(struct uhmm *h, const void *a, int rc, enum uhmm_state st)
{
	for (int k = 0; k < 5000; k++) {
		struct uhmm_page_info qi;
		int r = uhmm_query(h, a, 1, &qi);
		if (r == rc && (r != 0 || qi.state == st))
			return true;
		ms_sleep(1);
	}
	return false;
}

/* Poll (bounded, 5 s) until an atomic counter reaches v. */
static inline bool wait_ulong(atomic_ulong *c, unsigned long v)
{
	for (int k = 0; k < 5000 && atomic_load(c) < v; k++)
		ms_sleep(1);
	return atomic_load(c) == v;
}

static inline bool wait_used(struct uhmm_devmem *m, size_t v)
{
	for (int k = 0; k < 5000 && uhmm_devmem_used(m) != v; k++)
		ms_sleep(1);
	return uhmm_devmem_used(m) == v;
}

/* Quiet comparisons of one page (no error print): pattern / zero. */
static inline bool page_is(const void *page, size_t idx, unsigned seed)
{
	const volatile uint64_t *w = (const volatile uint64_t *)page;
	for (size_t j = 0; j < words_per_page(); j++)
		if (w[j] != pat(seed, idx, j))
			return false;
	return true;
}

static inline bool page_is_zero(const void *page)
{
	const volatile uint64_t *w = (const volatile uint64_t *)page;
	for (size_t j = 0; j < words_per_page(); j++)
		if (w[j])
			return false;
	return true;
}

/* ---- fork ---- */

static inline int wait_child(pid_t pid)
{
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (!WIFEXITED(st)) {
		print_error("child died: signal %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
		return -1;
	}
	if (WEXITSTATUS(st))
		print_error("child failed: exit status %d\n", WEXITSTATUS(st));
	return WEXITSTATUS(st);
}

/* A fresh context in the child (one does not survive fork): mode as given. */
static inline struct uhmm *child_open(enum uhmm_fault_mode mode)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	struct uhmm *h = NULL;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.fault_mode = mode;
	if (uhmm_open(&o, &h) != 0)
		return NULL;
	return h;
}

#endif /* UHMM_TESTS_HMM_H */
