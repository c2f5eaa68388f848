/* SPDX-License-Identifier: MIT */
/*
 * SIGBUS mode: with UFFD_FEATURE_SIGBUS the kernel raises SIGBUS in the
 * thread that touched a missing page of a managed range, instead of queueing
 * a message.  That thread resolves its own fault here — no cross-thread
 * wake-up — and returns to retry the access.
 *
 * Signal safety: this handler takes page locks (futex), a device's mirror
 * lock and the page-table arena lock, never malloc.  It is safe because
 * uhmm never touches managed memory while holding any of those (see
 * internal.h), so the interrupted code cannot hold them.
 *
 * Addresses uhmm does not manage (and faults it must fail, e.g. poisoned
 * pages) are passed to the handler that was installed before ours, or get
 * the default action.
 */
#include "internal.h"

#include <dirent.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction g_prev;
static int g_users;

static void chain(int sig, siginfo_t *si, void *uc)
{
	struct sigaction prev = g_prev;
	if (prev.sa_flags & SA_SIGINFO) {
		if (prev.sa_sigaction) {
			prev.sa_sigaction(sig, si, uc);
			return;
		}
	} else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
		prev.sa_handler(sig);
		return;
	}
	/* Default (or ignored, which the kernel does not honour for a fault):
	 * restore the default action; the access faults again and the
	 * process ends with SIGBUS as it would without uhmm. */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigaction(SIGBUS, &dfl, NULL);
}

static bool is_write(void *ucv)
{
#if defined(__x86_64__)
	ucontext_t *uc = ucv;
	return uc && (uc->uc_mcontext.gregs[REG_ERR] & 2);
#else
	(void)ucv;
	return false; /* a read fill is still correct: a write re-faults (CoW) */
#endif
}

/* userfaultfds of SIGBUS-mode contexts (their queues hold only events). */
#define MAX_SIGBUS_CTX 64
static _Atomic int g_fds[MAX_SIGBUS_CTX];

void sigbus_track_fd(int fd, bool on)
{
	for (int i = 0; i < MAX_SIGBUS_CTX; i++) {
		int expected = on ? 0 : fd + 1;
		if (atomic_compare_exchange_strong(&g_fds[i], &expected, on ? fd + 1 : 0))
			return;
	}
}

static bool events_pending(void)
{
	if (atomic_load(&g_svc_busy) > 0)
		return true;
	struct pollfd pf[MAX_SIGBUS_CTX];
	nfds_t n = 0;
	for (int i = 0; i < MAX_SIGBUS_CTX; i++) {
		int v = atomic_load(&g_fds[i]);
		if (v)
			pf[n++] = (struct pollfd){ .fd = v - 1, .events = POLLIN };
	}
	return n && poll(pf, n, 0) > 0;
}

/*
 * A SIGBUS the kernel raised while its range was registered may reach us
 * after the range left the registry (uhmm_close, uhmm_range_remove and
 * uhmm_free unregister from userfaultfd before they forget the range, so
 * by then the retried access faults as ordinary memory).  A fault at an
 * address no range holds is therefore retried, once per change of the
 * registry (and at most MISS_RETRIES times); only one that repeats with
 * the registry unchanged is the application's own and is passed on.
 */
#define MISS_RETRIES 16
static __thread uintptr_t tls_miss_addr __attribute__((tls_model("initial-exec")));
static __thread uint64_t tls_miss_gen __attribute__((tls_model("initial-exec")));
static __thread unsigned tls_miss_count __attribute__((tls_model("initial-exec")));

static bool retry_unknown(uintptr_t addr)
{
	uint64_t gen = atomic_load_explicit(&g_registry_gen, memory_order_acquire);
	uintptr_t page = addr & ~PAGE_MASK;
	if (tls_miss_addr != page) {
		tls_miss_addr = page;
		tls_miss_count = 0;
	} else if (tls_miss_gen == gen || tls_miss_count >= MISS_RETRIES) {
		tls_miss_addr = 0;
		return false;
	}
	tls_miss_gen = gen;
	tls_miss_count++;
	return true;
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	if (si->si_code != BUS_ADRERR) {
		chain(sig, si, uc);
		errno = saved;
		return;
	}
	uintptr_t addr = (uintptr_t)si->si_addr;
	TRACE(TR_SIGBUS, addr, 0, is_write(uc), 0);
	struct range_ent r;
	/* An madvise/munmap/mremap that returned has had its event read but
	 * maybe not handled: let that finish first, as the service thread's
	 * own ordering does in THREAD mode (else a page discarded a moment
	 * ago could be filled here and then marked discarded). */
	for (int i = 0; i < 100000 && atomic_load(&g_svc_busy) > 0; i++)
		sched_yield();
	unsigned tok = ebr_enter();
	int rc = -ENOENT;
	bool found = range_lookup(addr, &r);
	/* Not known: perhaps an mremap moved it and its REMAP event is still
	 * queued (unread: the mremap caller waits) or being handled.  Wait
	 * for the service threads while any of them has work. */
	for (int i = 0; !found && i < 200000 && events_pending(); i++) {
		ebr_exit(tok);
		sched_yield();
		tok = ebr_enter();
		found = range_lookup(addr, &r);
	}
	struct range_ent below;
	if (!found && range_lookup_below(addr, &below) && below.h->mode == UHMM_FAULT_SIGBUS) {
		/* Perhaps the tail of a range mremap grew in place (no event
		 * tells): its service thread adds it if the kernel has it
		 * registered with that context.  Still inside the EBR section
		 * that found below.h: uhmm_close waits for it (ebr_synchronize)
		 * before it stops that service thread and frees the context. */
		range_grow_request(below.h, addr);
		found = range_lookup(addr, &r);
	}
	if (found && r.h->mode == UHMM_FAULT_SIGBUS) {
		if (r.pool) {
			/* A device touched a free page of its pool: zeros. */
			size_t done;
			rc = uffd_zeropage(r.h->uffd, addr & ~PAGE_MASK, PAGE_SIZE, &done);
			rc = rc == -EEXIST ? 0 : rc;
		} else {
			for (int tries = 0;; tries++) {
				rc = fault_resolve(r.h, &r, addr, is_write(uc) ? FAULT_WRITE : 0, 0);
				if (rc != -EAGAIN || tries == 100000)
					break;
				/* The mm is changing, or an event changed the page
				 * before we could check it: once the service thread
				 * has handled what is queued, look again.  Memory
				 * that is no longer managed is retried as it is now
				 * (the access faults afresh, or SIGSEGV). */
				gate_wait_service(r.h);
				if (!range_lookup(addr, &r) || r.h->mode != UHMM_FAULT_SIGBUS) {
					rc = 0;
					break;
				}
			}
		}
	}
	ebr_exit(tok);
	if (!found && retry_unknown(addr)) {
		errno = saved;
		return;
	}
	if (rc && found && atomic_load_explicit(&g_trace_on, memory_order_relaxed)) {
		/* Debugging only (not signal-safe): why this access fails. */
		fprintf(stderr, "uhmm: SIGBUS at %#lx not resolved (%d)\n", (unsigned long)addr, rc);
		uhmm_debug_trace_dump(r.h, (void *)addr);
	}
	if (rc)
		chain(sig, si, uc);
	errno = saved;
}

/* Install (or put back first in line) our handler; counts users once per
 * context via sigbus_install at open and sigbus_release at close; later
 * calls only re-install if someone replaced it. */
static int install_locked(void)
{
	struct sigaction cur;
	if (sigaction(SIGBUS, NULL, &cur))
		return -errno;
	if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus)
		return 0;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, &g_prev))
		return -errno;
	return 0;
}

int sigbus_install(void)
{
	pthread_mutex_lock(&g_lock);
	int r = install_locked();
	pthread_mutex_unlock(&g_lock);
	return r;
}

int sigbus_acquire(void)
{
	pthread_mutex_lock(&g_lock);
	int r = install_locked();
	if (!r)
		g_users++;
	pthread_mutex_unlock(&g_lock);
	return r;
}

/* Does any thread of the process have a SIGBUS pending (raised, not yet
 * delivered)?  -1 if that cannot be read. */
static int sigbus_pending_anywhere(void)
{
	DIR *dir = opendir("/proc/self/task");
	if (!dir)
		return -1;
	int found = 0;
	struct dirent *de;
	while (!found && (de = readdir(dir))) {
		if (de->d_name[0] == '.')
			continue;
		char path[300], line[128];
		snprintf(path, sizeof(path), "/proc/self/task/%s/status", de->d_name);
		FILE *f = fopen(path, "re");
		if (!f)
			continue; /* the thread exited */
		while (fgets(line, sizeof(line), f)) {
			unsigned long long mask;
			if ((sscanf(line, "SigPnd: %llx", &mask) == 1 ||
			     sscanf(line, "ShdPnd: %llx", &mask) == 1) &&
			    (mask & (1ULL << (SIGBUS - 1))))
				found = 1;
		}
		fclose(f);
	}
	closedir(dir);
	return found;
}

/*
 * The last SIGBUS-mode context is closing and its ranges are unregistered,
 * so no new SIGBUS of ours can be raised.  One raised before may still be
 * pending in a thread that was preempted on its way back to user mode: it
 * is delivered to whatever handler is installed then, so the previous
 * handler (which would take it for a crash) goes back only once no thread
 * has a SIGBUS pending, seen twice 1 ms apart (for at most 10 s: a thread
 * can wait that long for a CPU on a loaded machine, as under TSan).  A
 * SIGBUS that was the application's own and pending meanwhile is delivered
 * to ours, which passes it on.
 */
static void wait_stale_sigbus(void)
{
	for (int clean = 0, i = 0; clean < 2 && i < 10000; i++) {
		int r = sigbus_pending_anywhere();
		if (r < 0)
			return;
		clean = r ? 0 : clean + 1;
		struct timespec ts = { 0, 1000000 };
		nanosleep(&ts, NULL);
	}
}

void sigbus_release(void)
{
	pthread_mutex_lock(&g_lock);
	if (g_users > 0 && --g_users == 0) {
		wait_stale_sigbus();
		struct sigaction cur;
		if (!sigaction(SIGBUS, NULL, &cur) && (cur.sa_flags & SA_SIGINFO) &&
		    cur.sa_sigaction == on_sigbus)
			sigaction(SIGBUS, &g_prev, NULL);
	}
	pthread_mutex_unlock(&g_lock);
}
