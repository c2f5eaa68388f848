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
	/* The messages of the batch in hand, in the order read; more are
	 * read into it while a REMAP waits for its explanation
	 * (remap_explain).  done: handled out of order already. */
	struct uffd_msg *m;
	bool *done;
	size_t mn, mcap, mhead;
	/* Tests only: messages held back until held_left more have been
	 * read (debug_hold_addr). */
	struct uffd_msg held[4];
	unsigned nheld, held_left;
};

static void handle(struct svc *s, const struct uffd_msg *m, size_t idx, int depth);

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

/* How long an API call waits for the events made before it (below). */
#define SYNC_NS     (100ull * 1000 * 1000)
#define SYNC_CYCLES 3

/*
 * An API call answers from the registry, which is as of the last event
 * handled.  The batch in hand is waited for; and an munmap or mremap that
 * another thread made before this call (its event made, perhaps not even
 * queued yet, certainly not handled) would make the answer stale: a
 * mapping that took the addresses it freed is not managed, whatever the
 * registry still says (RELIABILITY.md finding 30).  The kernel counts such
 * an event from the change on (uffd_events_pending), so the call waits for
 * the service thread to handle what is counted: SYNC_CYCLES read-and-handle
 * cycles at most (other threads' new events may keep the count up: not a
 * reason to wait on), and 100 ms (a thread stopped between its change and
 * its event).  Data never depended on this (the gate refuses kernel calls
 * while an event is unread): the answer does.  Never from the service
 * thread, a forked child (the probe would ask the parent's userfaultfd) or
 * a gate section (a callback: the service thread cannot read meanwhile).
 */
void service_quiesce(struct uhmm *h)
{
	if (pthread_equal(pthread_self(), h->service) || h->pid != getpid() || gate_held())
		return;
	uint64_t seq = atomic_load(&h->svc_seq);
	if (seq & 1)
		while (atomic_load(&h->svc_seq) == seq)
			sched_yield();
	if (!h->probe || !uffd_events_pending(h->uffd, h->probe))
		return;
	uint64_t t0 = now_ns();
	for (int cycle = 0; cycle < SYNC_CYCLES; cycle++) {
		/* One whole read-and-handle cycle that starts after now. */
		seq = atomic_load(&h->svc_seq);
		uint64_t end = seq + ((seq & 1) ? 3 : 2);
		service_kick(h);
		while (atomic_load(&h->svc_seq) < end) {
			if (now_ns() - t0 > SYNC_NS || atomic_load(&h->stopping))
				return;
			sched_yield();
		}
		if (!uffd_events_pending(h->uffd, h->probe))
			return;
	}
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

/* ---- the order events are handled in ----
 *
 * The kernel queues an event after making its change and dropping its
 * lock, so the events of different threads can be read in another order
 * than their changes were made in.  One case is decidable and matters: a
 * REMAP into addresses the registry still holds.  The kernel moves only
 * into free addresses, so the mapping held there went first, and its
 * event (an UNMAP, or a REMAP that moved it away) has not been read yet;
 * it will be, as soon as the thread that made it is scheduled.  Handled
 * in the order read, the REMAP would drop what is there and the late
 * event would then undo or misroute the move (RELIABILITY.md finding 26
 * (d)).  So the REMAP waits, reading on, for the events that explain its
 * destination, and those are handled first: while the kernel still counts
 * an event made and not read (svc_pending), 500 ms at most.  A REMAP
 * from there read after the waiting REMAP's own source UNMAP may be the
 * moved mapping moving on (its mover is past that point): not an
 * explanation.  Messages read meanwhile keep their order.  If the wait
 * runs out, the late UNMAP is counted as owed instead (owed.c).
 */
#define EXPLAIN_NS (500 * 1000 * 1000ull)

static bool svc_room(struct svc *s, size_t more)
{
	if (s->mn + more <= s->mcap)
		return true;
	size_t cap = MAX(s->mcap * 2, s->mn + more);
	struct uffd_msg *m = realloc(s->m, cap * sizeof(*m));
	if (!m)
		return false;
	s->m = m;
	bool *d = realloc(s->done, cap * sizeof(*d));
	if (!d)
		return false;
	s->done = d;
	s->mcap = cap;
	return true;
}

/* Tests only (tests/stress/late_unmap.c): hold back the next
 * debug_hold_count UNMAP and REMAP events from the address
 * debug_hold_addr (only UNMAPs if debug_hold_unmap_only) until
 * debug_hold_after more messages are read (0: until the thread is idle;
 * DEBUG_HOLD_UNTIL_WAIT: until a REMAP waits for them), as if the kernel had
 * queued them that late. */
_Atomic uintptr_t debug_hold_addr;
_Atomic unsigned debug_hold_count, debug_hold_after;
_Atomic unsigned debug_hold_unmap_only; /* only UNMAP events */

static bool is_mm_event(const struct uffd_msg *m)
{
	return m->event == UFFD_EVENT_REMAP || m->event == UFFD_EVENT_UNMAP;
}

static void svc_append(struct svc *s, const struct uffd_msg *m)
{
	s->m[s->mn] = *m;
	s->done[s->mn++] = false;
	if (is_mm_event(m))
		s->h->svc_unhandled++;
}

static void svc_release_held(struct svc *s)
{
	if (!svc_room(s, s->nheld))
		return; /* kept for the next try */
	for (unsigned k = 0; k < s->nheld; k++)
		svc_append(s, &s->held[k]);
	s->nheld = s->held_left = 0;
}

static bool debug_hold(struct svc *s, const struct uffd_msg *m)
{
	bool remap_too = !atomic_load(&debug_hold_unmap_only);
	uintptr_t a = m->event == UFFD_EVENT_UNMAP ? m->arg.remove.start
	            : m->event == UFFD_EVENT_REMAP && remap_too ? m->arg.remap.from : 0;
	if (a != atomic_load(&debug_hold_addr) || s->nheld == 4)
		return false;
	s->held[s->nheld++] = *m;
	if (s->nheld >= MAX(1u, atomic_load(&debug_hold_count)))
		atomic_store(&debug_hold_addr, 0);
	s->held_left = atomic_load(&debug_hold_after); /* 0: until this thread is idle */
	return true;
}

/* Read what is queued (never blocks) onto the batch: how many messages
 * were read (0 when only a held one was), or -1 with errno. */
static ssize_t svc_read(struct svc *s)
{
	if (!svc_room(s, MSG_BATCH + 4)) { /* + what the test aid may hold */
		errno = EAGAIN;
		return -1;
	}
	struct uffd_msg in[MSG_BATCH];
	ssize_t n = read(s->h->uffd, in, sizeof(in));
	if (n <= 0)
		return n < 0 ? -1 : 0;
	n /= (ssize_t)sizeof(in[0]);
	for (ssize_t i = 0; i < n; i++) {
		if (unlikely(atomic_load_explicit(&debug_hold_addr, memory_order_relaxed)) &&
		    debug_hold(s, &in[i]))
			continue;
		if (s->held_left && s->held_left != DEBUG_HOLD_UNTIL_WAIT && --s->held_left == 0)
			svc_release_held(s);
		svc_append(s, &in[i]);
	}
	return n;
}

static bool svc_read_more(struct svc *s)
{
	return svc_read(s) > 0;
}

/* Can an event still come that was made before now?  The kernel counts an
 * event from the moment its change is made (under its lock) until the
 * thread that made it resumes after the event is read; an mremap's source
 * UNMAP is counted along with its REMAP.  No
 * probe (no write-protect support): cannot tell, so yes.  Messages the
 * test aid holds back count as not read. */
static bool svc_pending(struct svc *s)
{
	return s->nheld || !s->h->probe || uffd_events_pending(s->h->uffd, s->h->probe);
}

/* Is q the UNMAP of the source of a REMAP from `from` (its mover's next event)? */
static bool is_source_unmap(const struct uffd_msg *q, uintptr_t from, size_t len)
{
	return q->event == UFFD_EVENT_UNMAP && q->arg.remove.start == from &&
	       q->arg.remove.end == from + len;
}

/* Take [a, b) out of the intervals need[0..*n); true if it overlapped. */
static bool cut_need(struct vma_info *need, int *n, int max, uintptr_t a, uintptr_t b)
{
	bool hit = false;
	for (int i = 0; i < *n; i++) {
		struct vma_info v = need[i];
		if (b <= v.start || a >= v.end)
			continue;
		hit = true;
		bool left = a > v.start, right = b < v.end;
		if (left && right && *n < max) {
			need[i].end = a;
			need[(*n)++] = (struct vma_info){ .start = b, .end = v.end };
		} else if (left) {
			need[i].end = a;
		} else if (right) {
			need[i].start = b;
		} else {
			need[i--] = need[--*n];
		}
	}
	return hit;
}

/* Does the UNMAP of a REMAP's source follow (a move), or is the source
 * kept (MREMAP_DONTUNMAP)?  The mover queues that UNMAP as soon as its
 * REMAP is read, and the kernel counts it from the move on.  Where the
 * source is registered now (kept, or a newer mapping moved there
 * already), wait for it while an event is counted (bounded). */
static bool remap_source_unmapped(struct svc *s, size_t idx, uintptr_t from, size_t len)
{
	uint64_t t0 = 0;
	size_t at = idx + 1; /* what was read after this REMAP */
	for (bool probed = false;;) {
		for (; at < s->mn; at++) {
			const struct uffd_msg *q = &s->m[at];
			if (!s->done[at] && is_source_unmap(q, from, len))
				return true;
		}
		if (!probed) {
			probed = true;
			if (!remap_source_registered(s->h, from, len))
				return true;
			if (!s->h->probe)
				return false; /* cannot tell: kept, as before the counts */
			t0 = now_ns();
		}
		/* Nothing made and unread: no UNMAP follows (kept). */
		if (!svc_pending(s) || now_ns() - t0 > EXPLAIN_NS)
			return false;
		if (!svc_read_more(s))
			sched_yield();
	}
}

static void remap_explain(struct svc *s, size_t idx, uintptr_t from, uintptr_t to, size_t len,
                          int depth)
{
	struct vma_info need[16];
	int nn = range_held_parts(s->h, to, to + len, need, 8);
	if (nn <= 0 || depth > 3)
		return;
	uint64_t t0 = now_ns();
	size_t found[16];
	int nf = 0;
	bool past_source = false;
	size_t at = idx + 1; /* what was read after this REMAP */
	for (;;) {
		for (; at < s->mn && nn > 0 && nf < 16; at++) {
			const struct uffd_msg *q = &s->m[at];
			if (s->done[at])
				continue;
			if (q->event == UFFD_EVENT_UNMAP) {
				past_source |= is_source_unmap(q, from, len);
				if (cut_need(need, &nn, 16, q->arg.remove.start, q->arg.remove.end))
					found[nf++] = at;
			} else if (q->event == UFFD_EVENT_REMAP && !past_source) {
				if (cut_need(need, &nn, 16, q->arg.remap.from, q->arg.remap.from + q->arg.remap.len))
					found[nf++] = at;
			}
		}
		/* Nothing made and unread: what is held there is not explained
		 * by an event still to come. */
		if (nn == 0 || nf == 16 || !svc_pending(s) || now_ns() - t0 > EXPLAIN_NS)
			break;
		if (unlikely(s->nheld) && s->held_left == DEBUG_HOLD_UNTIL_WAIT) {
			svc_release_held(s); /* tests only: they come during the wait */
			continue;
		}
		if (!svc_read_more(s))
			sched_yield();
	}
	TRACE(TR_EV_REMAP, from, to, nf, nn ? 2 : 1);
	PTRACE(EV_REMAP, 0, from, len, to, 0x100 | (unsigned)nf | (nn ? 0x200 : 0));
	for (int i = 0; i < nf; i++) {
		/* One handled already by a nested wait (it explained a REMAP
		 * found here too) is not handled twice. */
		if (s->done[found[i]])
			continue;
		struct uffd_msg q = s->m[found[i]];
		s->done[found[i]] = true;
		handle(s, &q, found[i], depth + 1);
	}
	atomic_fetch_add_explicit(nn ? &s->h->order_timeouts : &s->h->order_explained, 1,
	                          memory_order_relaxed);
}

static void handle(struct svc *s, const struct uffd_msg *m, size_t idx, int depth)
{
	struct uhmm *h = s->h;
	if (is_mm_event(m) && h->svc_unhandled)
		h->svc_unhandled--;
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
	case UFFD_EVENT_REMAP: {
		/* By value: remap_explain may read more messages (realloc). */
		uintptr_t from = m->arg.remap.from, to = m->arg.remap.to;
		size_t len = m->arg.remap.len;
		stat_add(h, ST_EVENTS, 1);
		TRACE(TR_EV_REMAP, from, to, len, 0);
		remap_explain(s, idx, from, to, len, depth);
		bool still = !remap_source_unmapped(s, idx, from, len);
		self_change_hole(h, from, from + len);
		remap_range(h, from, to, len, still);
		break;
	}
	default:
		break;
	}
}

static void *service_main(void *arg)
{
	struct uhmm *h = arg;
	uffd_set_service_thread();
	struct svc s = { .h = h };
	uint64_t spin_ns = (uint64_t)h->spin_us * 1000, last = now_ns();
	bool spin = h->mode == UHMM_FAULT_THREAD && h->spin_us > 1;
	bool grow_later = false; /* growth requests wait for an event to be read */

	gate_set_service_thread();
	for (;;) {
		/* A slow service thread: events made wait longer to be read
		 * (tests of what calls see meanwhile). */
		DELAY(DELAY_SERVICE);
		/* No migration is between its checks and its kernel calls while
		 * we read and handle (gate.c). */
		gate_close(h);
		/* Odd while a batch is read and handled: reading an event lets
		 * the thread that caused it go on before we handled it. */
		atomic_fetch_add(&h->svc_seq, 1);
		atomic_fetch_add(&g_svc_busy, 1);
		s.mn = s.mhead = 0;
		ssize_t n = svc_read(&s);
		if (n < 0 && errno == EAGAIN && s.nheld && !s.held_left) {
			/* Tests only (held "until idle"): the held ones now. */
			svc_release_held(&s);
			n = 1;
		}
		n = s.mn ? (ssize_t)s.mn : n;
		if (n > 0) {
			while (s.mhead < s.mn) {
				size_t i = s.mhead++;
				if (!s.done[i]) {
					struct uffd_msg q = s.m[i];
					handle(&s, &q, i, 0);
				}
			}
			grow_later = range_grow_serve(h);
			/* Every count is an UNMAP made and not read: with none
			 * counted by the kernel and none held, stale (owed.c). */
			if (owed_any(h) && !s.nheld && h->probe && !uffd_events_pending(h->uffd, h->probe))
				owed_settle(h);
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
		grow_later = range_grow_serve(h);
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
		int pr = poll(pf, 2, s.n || grow_later ? 1 : -1);
		if (pr > 0 && (pf[1].revents & POLLIN)) {
			uint64_t v;
			ssize_t rr = read(h->wake_fd, &v, sizeof(v));
			(void)rr;
		}
		if (pr > 0 && (pf[0].revents & POLLIN))
			last = now_ns();
	}
	free(s.q);
	free(s.m);
	free(s.done);
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
