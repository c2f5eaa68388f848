/* SPDX-License-Identifier: MIT */
/*
 * The service thread: reads the context's userfaultfd.
 *
 * It serves page faults in THREAD mode and kernel events in every mode
 * (UNMAP, REMOVE, REMAP block the thread that caused them until read, so
 * this thread must always be reading: it never sleeps on a page lock, it
 * defers the fault and retries when the page is unlocked).
 *
 * A cross-vCPU wake-up costs ~100 µs on our VMs, more than resolving a
 * fault, so after each message the thread keeps polling for spin_us before
 * it sleeps in poll(2): a stream of faults is served without wake-ups.
 */
#include "internal.h"

#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MSG_BATCH 64

/* Service threads of all contexts between reading a batch and finishing
 * it: a SIGBUS at an address whose mremap event is in such a batch waits. */
_Atomic long g_svc_busy;

struct deferred {
	uintptr_t addr;
	unsigned flags;
	uint32_t ptid;
	bool unknown; /* address not managed yet: an event may still be queued */
};

struct svc {
	struct uhmm *h;
	struct deferred *q;
	size_t n, cap;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

void service_quiesce(struct uhmm *h)
{
	uint64_t seq = atomic_load(&h->svc_seq);
	if (!(seq & 1) || pthread_equal(pthread_self(), h->service))
		return;
	while (atomic_load(&h->svc_seq) == seq)
		sched_yield();
}

void service_kick(struct uhmm *h)
{
	uint64_t one = 1;
	ssize_t r = write(h->wake_fd, &one, sizeof(one));
	(void)r;
}

/* The access must fail: make the faulting thread take SIGBUS. */
static void fail_access(struct uhmm *h, uintptr_t addr, uint32_t ptid)
{
	uintptr_t page = addr & ~PAGE_MASK;
	unsigned tok = ebr_enter();
	_Atomic uint64_t *e = ptable_entry(&h->pt, page, false);
	bool poisoned = e && pte_state(atomic_load(e)) == UHMM_STATE_POISONED;
	ebr_exit(tok);
	/* A poison marker makes every later access fail in the kernel; but a
	 * page whose data is still on the device must stay movable back, so
	 * there the thread is signalled directly. */
	if (poisoned && h->have_poison && uffd_poison(h->uffd, page, PAGE_SIZE) == 0)
		return;
	PTRACE(FAULT_SVC, e, page, PAGE_SIZE, 0xdead, ptid);
	if (ptid)
		syscall(SYS_tgkill, getpid(), (pid_t)ptid, SIGBUS);
	uffd_wake(h->uffd, page, PAGE_SIZE);
}

/* 0 done, -EAGAIN retry later. */
static int serve_fault(struct uhmm *h, uintptr_t addr, unsigned flags, uint32_t ptid)
{
	struct range_ent r;
	unsigned tok = ebr_enter();
	int rc;
	if (!range_lookup_managed(h, addr, &r)) {
		bool known = range_lookup(addr, &r);
		ebr_exit(tok);
		/* Not known: a range an mremap just moved, whose REMAP event is
		 * still queued behind this fault (faults are read first); or a
		 * free slot of a device pool its device touched (zeros).  Wait
		 * until the queue holds no event, then serve it as what it is. */
		if (!(flags & FAULT_DRAINED))
			return -ENOENT;
		/* Or a mapping of ours that mremap grew in place (no event):
		 * its tail is managed memory, served as such below. */
		bool grown = !known && range_discover(h, addr, addr + 1) > 0;
		tok = ebr_enter();
		if (!grown || !range_lookup_managed(h, addr, &r)) {
			ebr_exit(tok);
			size_t done;
			if (uffd_zeropage(h->uffd, addr & ~PAGE_MASK, PAGE_SIZE, &done) == -EAGAIN)
				return -EAGAIN;
			uffd_wake(h->uffd, addr & ~PAGE_MASK, PAGE_SIZE);
			return 0;
		}
	}
	rc = fault_resolve(h, &r, addr, flags | FAULT_SERVICE, ptid ? ptid : 1);
	ebr_exit(tok);
	if (rc == -EFAULT) {
		fail_access(h, addr, ptid);
		return 0;
	}
	return rc;
}

static void defer(struct svc *s, uintptr_t addr, unsigned flags, uint32_t ptid, bool unknown)
{
	for (size_t i = 0; i < s->n; i++)
		if ((s->q[i].addr & ~PAGE_MASK) == (addr & ~PAGE_MASK))
			return; /* the wake-up of one resolution wakes every waiter of the page */
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		struct deferred *q = realloc(s->q, cap * sizeof(*q));
		if (!q)
			return; /* the faulting thread re-faults after any wake-up */
		s->q = q;
		s->cap = cap;
	}
	s->q[s->n++] = (struct deferred){ addr, flags, ptid, unknown };
	atomic_fetch_add(&s->h->waiting, 1);
	stat_add(s->h, ST_DEFERRED, 1);
}

/*
 * A deferred fault is never resolved later: by then the page may have been
 * served and migrated again, and resolving a stale message would pull it
 * back for nobody.  Once the page is unlocked, wake its waiters instead: a
 * thread whose page is still missing faults again and sends a fresh message.
 */
static void retry_deferred(struct svc *s, bool drained)
{
	struct uhmm *h = s->h;
	size_t k = 0;
	for (size_t i = 0; i < s->n; i++) {
		struct deferred d = s->q[i];
		uintptr_t page = d.addr & ~PAGE_MASK;
		if (d.unknown) {
			/* Served once its event was handled or none is queued. */
			int r = serve_fault(h, d.addr, d.flags | (drained ? FAULT_DRAINED : 0), d.ptid);
			PTRACE(FAULT_SVC, 0, d.addr & ~PAGE_MASK, PAGE_SIZE, d.flags | 0x100, r);
			if (r == -ENOENT) {
				s->q[k++] = d;
				continue;
			}
			if (r == -EAGAIN) {
				d.unknown = false; /* managed now, page busy */
				s->q[k++] = d;
				continue;
			}
			atomic_fetch_sub(&h->waiting, 1);
			continue;
		}
		_Atomic uint64_t *e = ptable_entry(&h->pt, page, false);
		if (e && (atomic_load(e) & PTE_BUSY)) {
			s->q[k++] = d;
			continue;
		}
		uffd_wake(h->uffd, page, PAGE_SIZE);
		atomic_fetch_sub(&h->waiting, 1);
	}
	s->n = k;
}

/* An UNMAP or REMOVE over [st, en): the pages our own change is due to
 * raise an event for are skipped once (self_change_begin); the rest are
 * the application's. */
static void cpu_change(struct uhmm *h, uintptr_t st, uintptr_t en, bool unmap)
{
	uint64_t own[BATCH_PAGES / 64];
	uintptr_t base = self_change_claim(h, st, en, unmap, own);
	uintptr_t run = st;
	uintptr_t hi = base ? MIN(en, base + (uintptr_t)BATCH_PAGES * PAGE_SIZE) : 0;
	for (uintptr_t a = MAX(st, base); a < hi; a += PAGE_SIZE) {
		size_t i = (a - base) / PAGE_SIZE;
		if (!(own[i / 64] >> (i % 64) & 1))
			continue;
		if (a > run) {
			if (unmap)
				unmap_range(h, run, a);
			else
				discard_range(h, run, a, UHMM_EVENT_DISCARD);
		}
		run = a + PAGE_SIZE;
	}
	if (en > run) {
		if (unmap)
			unmap_range(h, run, en);
		else
			discard_range(h, run, en, UHMM_EVENT_DISCARD);
	}
}

static void handle(struct svc *s, const struct uffd_msg *m)
{
	struct uhmm *h = s->h;
	switch (m->event) {
	case UFFD_EVENT_PAGEFAULT: {
		unsigned flags = (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) ? FAULT_WRITE : 0;
		uint32_t ptid = m->arg.pagefault.feat.ptid;
		int r = serve_fault(h, m->arg.pagefault.address, flags, ptid);
		PTRACE(FAULT_SVC, 0, m->arg.pagefault.address & ~PAGE_MASK, PAGE_SIZE, flags, r);
		if (r == -EAGAIN || r == -ENOENT)
			defer(s, m->arg.pagefault.address, flags, ptid, r == -ENOENT);
		break;
	}
	case UFFD_EVENT_REMOVE: {
		uintptr_t st = m->arg.remove.start, en = m->arg.remove.end;
		stat_add(h, ST_EVENTS, 1);
		TRACE(TR_EV_REMOVE, st, en, 0, 0);
		/* Our own copy-fallback discard (maybe split per VMA) is
		 * skipped; the discarding thread keeps its marker until this
		 * batch is handled (see self_change_begin). */
		cpu_change(h, st, en, false);
		break;
	}
	case UFFD_EVENT_UNMAP:
		stat_add(h, ST_EVENTS, 1);
		TRACE(TR_EV_UNMAP, m->arg.remove.start, m->arg.remove.end, 0, 0);
		self_change_hole(h, m->arg.remove.start, m->arg.remove.end);
		/* Never a discard's; maybe our own remapping of a coherent granule. */
		cpu_change(h, m->arg.remove.start, m->arg.remove.end, true);
		break;
	case UFFD_EVENT_REMAP:
		stat_add(h, ST_EVENTS, 1);
		TRACE(TR_EV_REMAP, m->arg.remap.from, m->arg.remap.to, m->arg.remap.len, 0);
		self_change_hole(h, m->arg.remap.from, m->arg.remap.from + m->arg.remap.len);
		remap_range(h, m->arg.remap.from, m->arg.remap.to, m->arg.remap.len);
		break;
	default:
		break;
	}
}

static void *service_main(void *arg)
{
	struct uhmm *h = arg;
	uffd_set_service_thread();
	struct svc s = { .h = h };
	struct uffd_msg msgs[MSG_BATCH];
	uint64_t spin_ns = (uint64_t)h->spin_us * 1000, last = now_ns();
	bool spin = h->mode == UHMM_FAULT_THREAD && h->spin_us > 1;

	gate_set_service_thread();
	for (;;) {
		/* No migration is between its checks and its kernel calls while
		 * we read and handle (gate.c). */
		gate_close(h);
		/* Odd while a batch is read and handled: reading an event lets
		 * the thread that caused it go on before we handled it. */
		atomic_fetch_add(&h->svc_seq, 1);
		atomic_fetch_add(&g_svc_busy, 1);
		ssize_t n = read(h->uffd, msgs, sizeof(msgs));
		if (n > 0) {
			for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++)
				handle(&s, &msgs[i]);
			range_grow_serve(h);
			atomic_fetch_sub(&g_svc_busy, 1);
			atomic_fetch_add(&h->svc_seq, 1);
			if (s.n)
				retry_deferred(&s, false);
			gate_open(h);
			last = now_ns();
			continue;
		}
		atomic_fetch_sub(&g_svc_busy, 1);
		atomic_fetch_add(&h->svc_seq, 1);
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			gate_open(h);
			break;
		}
		range_grow_serve(h);
		if (s.n)
			retry_deferred(&s, true);
		gate_open(h);
		if (atomic_load(&h->stopping) && s.n == 0)
			break;
		if (spin && now_ns() - last < spin_ns) {
			for (int i = 0; i < 32; i++)
				cpu_relax();
			continue;
		}
		struct pollfd pf[2] = { { h->uffd, POLLIN, 0 }, { h->wake_fd, POLLIN, 0 } };
		int pr = poll(pf, 2, s.n ? 1 : -1);
		if (pr > 0 && (pf[1].revents & POLLIN)) {
			uint64_t v;
			ssize_t rr = read(h->wake_fd, &v, sizeof(v));
			(void)rr;
		}
		if (pr > 0 && (pf[0].revents & POLLIN))
			last = now_ns();
	}
	free(s.q);
	return NULL;
}

int service_start(struct uhmm *h)
{
	h->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (h->wake_fd < 0)
		return -errno;
	/* Application signals are not for this thread. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = pthread_create(&h->service, NULL, service_main, h);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r) {
		close(h->wake_fd);
		return -r;
	}
	h->service_running = true;
	return 0;
}

void service_stop(struct uhmm *h)
{
	if (!h->service_running)
		return;
	atomic_store(&h->stopping, true);
	service_kick(h);
	pthread_join(h->service, NULL);
	h->service_running = false;
	close(h->wake_fd);
}
