/* SPDX-License-Identifier: MIT */
/*
 * Shared helpers of the device-memory-type tests (README, "Device memory types"):
 * dummy devices of each class, a bare host-backed device, a signal catcher
 * for in-place accesses that must fault (SIGSEGV on read-only memory,
 * SIGBUS on lost device memory), and bounded waits for effects that an
 * event handler may apply just after the system call returned.
 */
#ifndef UHMM_TESTS_TYPES_H
#define UHMM_TESTS_TYPES_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>

#include "testdev.h"

#define CLS_PRIVATE    (UHMM_DEVMEM_DEVICE | UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE)
#define CLS_COHERENT   (UHMM_DEVMEM_DEVICE | UHMM_DEVMEM_ALLOW_MIGRATION)
#define CLS_PERSISTENT (UHMM_DEVMEM_DEVICE)

/* Pages per coherent granule. */
static inline size_t GP(void)
{
	return UHMM_COHERENT_GRANULE / PS();
}

static inline struct uhmm_device *t_dummy_cls(struct uhmm *h, unsigned flags, size_t capacity,
                                              const char *path)
{
	struct uhmm_dummy_options o = UHMM_DUMMY_OPTIONS_INIT;
	struct uhmm_device *d = NULL;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.devmem_flags = flags;
	o.capacity = capacity;
	o.path = path;
	assert_int_equal(uhmm_dummy_create(h, &o, &d), 0);
	assert_non_null(d);
	return d;
}

static inline struct uhmm_device *t_coherent(struct uhmm *h)
{
	return t_dummy_cls(h, CLS_COHERENT, 0, NULL);
}

/* A HOST_BACKED device with no callbacks and no memory yet. */
static inline struct uhmm_device *t_hostdev(struct uhmm *h)
{
	struct uhmm_device_ops ops;
	struct uhmm_device *d = NULL;
	memset(&ops, 0, sizeof(ops));
	assert_int_equal(uhmm_device_create(h, "types-host", &ops, UHMM_DEVICE_HOST_BACKED, NULL,
	                                    &d), 0);
	assert_non_null(d);
	return d;
}

/* ---- catching a fault of an in-place access ---- */

static sigjmp_buf t_sig_env;
static volatile sig_atomic_t t_nsig;

static void t_on_sig(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	t_nsig++;
	siglongjmp(t_sig_env, 1);
}

/* Install the catcher for sig (before uhmm_open, so uhmm chains to it). */
static inline void t_catch(int sig, struct sigaction *saved)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = t_on_sig;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(sig, &sa, saved), 0);
}

static inline bool t_read_faults(const void *addr)
{
	if (sigsetjmp(t_sig_env, 1) == 0) {
		(void)*(const volatile uint64_t *)addr;
		return false;
	}
	return true;
}

static inline bool t_write_faults(void *addr, uint64_t v)
{
	if (sigsetjmp(t_sig_env, 1) == 0) {
		*(volatile uint64_t *)addr = v;
		return false;
	}
	return true;
}

/* ---- time ---- */

static inline double t_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Wait (at most 5 s) until uhmm_devmem_used(m) == want; returns it. */
static inline size_t t_wait_used(struct uhmm_devmem *m, size_t want)
{
	double t0 = t_now();
	size_t u;
	while ((u = uhmm_devmem_used(m)) != want && t_now() - t0 < 5.0)
		usleep(1000);
	return u;
}

static inline int t_wait_child(pid_t pid)
{
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (!WIFEXITED(st)) {
		print_error("child died: signal %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
		return -1;
	}
	return WEXITSTATUS(st);
}

/*
 * One of the first `limit` pages of addressable block m holds exactly the
 * contents of page (a device-side check; blocks hand out pages from the
 * start, and reading a hole of the memory file would allocate it).
 */
static inline bool t_devmem_holds(struct uhmm_devmem *m, size_t limit, const void *page)
{
	size_t n = uhmm_devmem_npages(m) < limit ? uhmm_devmem_npages(m) : limit;
	for (size_t i = 0; i < n; i++) {
		const void *a = uhmm_devmem_host_addr(m, i);
		if (a && memcmp(a, page, PS()) == 0)
			return true;
	}
	return false;
}

#endif /* UHMM_TESTS_TYPES_H */
