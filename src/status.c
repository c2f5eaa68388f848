/* SPDX-License-Identifier: MIT */
/*
 * The live-status segment (layout and protocol: status.h): a POSIX
 * shared-memory object per context that `uhmm stat` and `uhmm top` read.
 *
 * Cost on the fault path: none beyond what it paid before.  The context's
 * counters are not copied there, they live there: h->stats points into the
 * segment (or into the context itself when there is none), and stat_add
 * is the same relaxed add on the same kind of line.  Device and page-state
 * figures are computed only when a reader asks, by a thread of the context
 * that sleeps on a futex in the segment otherwise; it reads the page table
 * lock-free (like uhmm_query), takes no page lock and touches no managed
 * memory, so it obeys the rules of internal.h without taking part in them.
 */
#include "internal.h"
#include "status.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SAME(a, b) ((int)(a) == (int)(b))
_Static_assert(SAME(ST__COUNT, UHMM_STATUS__COUNT) && (int)ST__COUNT <= UHMM_STATUS_NSTATS,
               "status.h mirrors the ST_* counters");
_Static_assert(SAME(ST_POISONED, UHMM_STATUS_POISONED) && SAME(ST_AHEAD, UHMM_STATUS_AHEAD) &&
               SAME(ST_CPU_FAULTS, UHMM_STATUS_CPU_FAULTS) &&
               SAME(ST_TO_DEVICE, UHMM_STATUS_TO_DEVICE) &&
               SAME(ST_TO_SYSTEM, UHMM_STATUS_TO_SYSTEM) && SAME(ST_EVENTS, UHMM_STATUS_EVENTS),
               "status.h mirrors the ST_* order");
_Static_assert(UHMM_STATE_POISONED + 1 == UHMM_STATUS_NSTATES, "one count per page state");

static _Atomic uint32_t g_serial;

/* Shared (not _PRIVATE) futex ops: the reader is another process. */
static void sfutex_wait(_Atomic uint32_t *w, uint32_t val)
{
	syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, val, NULL, NULL, 0);
}
static void sfutex_wake(_Atomic uint32_t *w)
{
	syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

struct walk_counts {
	uint64_t pages[UHMM_STATUS_NSTATES];
};

static int count_entry(uintptr_t addr, _Atomic uint64_t *e, void *arg)
{
	(void)addr;
	struct walk_counts *c = arg;
	unsigned st = pte_state(atomic_load_explicit(e, memory_order_relaxed));
	if (st < UHMM_STATUS_NSTATES)
		c->pages[st]++;
	return 0;
}

static void snapshot(struct uhmm *h, struct uhmm_status *s)
{
	struct uhmm_status_dev dev[UHMM_STATUS_NDEV];
	uint32_t ndev = 0;
	/* Under dev_lock a device in h->devices is not freed (destroy clears
	 * its slot under it first); under d->lock no block leaves its list. */
	pthread_mutex_lock(&h->dev_lock);
	for (int i = 0; i < MAX_DEVICES && ndev < UHMM_STATUS_NDEV; i++) {
		struct uhmm_device *d = atomic_load(&h->devices[i]);
		if (!d)
			continue;
		struct uhmm_status_dev *o = &dev[ndev++];
		memset(o, 0, sizeof(*o));
		memcpy(o->name, d->name, sizeof(o->name));
		o->name[sizeof(o->name) - 1] = '\0';
		o->slot = (uint32_t)i;
		pthread_mutex_lock(&d->lock);
		o->max_pages = d->grow_chunk ? d->capacity >> PAGE_SHIFT : 0;
		for (struct uhmm_devmem *m = d->mems; m; m = m->next) {
			o->nblocks++;
			size_t u = atomic_load(&m->used);
			o->used_pages += u;
			if (devmem_coherent(m) || devmem_persistent(m))
				o->coherent_pages += u;
			o->capacity_pages += m->npages;
		}
		pthread_mutex_unlock(&d->lock);
	}
	pthread_mutex_unlock(&h->dev_lock);

	struct range_ent *v = NULL;
	long n = range_list(h, &v);
	uint32_t nr = n > 0 ? (uint32_t)MIN((unsigned long)n, UHMM_STATUS_NRANGES) : 0;
	/* Written under the seqlock; the walks (the slow part) go straight
	 * into the segment, so a reader that sees seq move retries. */
	atomic_fetch_add_explicit(&s->seq, 1, memory_order_acq_rel);
	atomic_thread_fence(memory_order_release);
	memcpy(s->dev, dev, ndev * sizeof(dev[0]));
	s->ndevices = ndev;
	for (uint32_t i = 0; i < nr; i++) {
		struct walk_counts c = { { 0 } };
		ptable_walk(&h->pt, v[i].start, v[i].end, count_entry, &c);
		uint64_t total = (v[i].end - v[i].start) >> PAGE_SHIFT, seen = 0;
		for (int k = 1; k < UHMM_STATUS_NSTATES; k++)
			seen += c.pages[k];
		/* Pages without a leaf, or with a 0 entry, were never populated. */
		c.pages[UHMM_STATE_NONE] = total > seen ? total - seen : 0;
		s->range[i].start = v[i].start;
		s->range[i].end = v[i].end;
		memcpy(s->range[i].pages, c.pages, sizeof(c.pages));
	}
	s->nranges = nr;
	s->nranges_total = n > 0 ? (uint32_t)n : 0;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	s->snapshot_ns = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
	atomic_fetch_add_explicit(&s->seq, 1, memory_order_release);
	if (n >= 0)
		free(v);
}

static void *status_main(void *arg)
{
	struct uhmm *h = arg;
	struct uhmm_status *s = h->status;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	while (!atomic_load(&h->status_stop)) {
		uint32_t r = atomic_load(&s->req);
		if (r != atomic_load(&s->done)) {
			snapshot(h, s);
			atomic_store(&s->done, r);
			sfutex_wake(&s->done);
			continue;
		}
		sfutex_wait(&s->req, r);
	}
	return NULL;
}

static bool status_disabled(const struct uhmm_options *o)
{
	const char *e = getenv("UHMM_NO_STATUS");
	return (o->flags & UHMM_OPT_NO_STATUS) || (e && *e && strcmp(e, "0") != 0);
}

void status_open(struct uhmm *h, const struct uhmm_options *o)
{
	h->stats = h->stats_local;
	if (status_disabled(o))
		return;
	uint32_t serial = atomic_fetch_add(&g_serial, 1);
	snprintf(h->status_name, sizeof(h->status_name), "/" UHMM_STATUS_PREFIX "%d.%u",
	         (int)h->pid, serial);
	int fd = shm_open(h->status_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 && errno == EEXIST) {
		/* Left by a dead process that had our pid: ours now. */
		shm_unlink(h->status_name);
		fd = shm_open(h->status_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	}
	if (fd < 0)
		goto none; /* no /dev/shm: the library works the same, unseen */
	struct uhmm_status *s = MAP_FAILED;
	if (ftruncate(fd, sizeof(*s)) == 0)
		s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (s == MAP_FAILED) {
		shm_unlink(h->status_name);
		goto none;
	}
	s->version = UHMM_STATUS_VERSION;
	s->size = sizeof(*s);
	s->pid = (int32_t)h->pid;
	s->serial = serial;
	s->fault_mode = (uint32_t)h->mode;
	s->nstats = ST__COUNT;
	h->status = s;
	h->stats = s->stats;
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = pthread_create(&h->status_tid, NULL, status_main, h);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	h->status_running = r == 0;
	/* Valid from here: a reader that sees the magic sees the rest. */
	atomic_thread_fence(memory_order_release);
	memcpy(s->magic, UHMM_STATUS_MAGIC, sizeof(s->magic));
	return;
none:
	h->status_name[0] = '\0';
}

void status_close(struct uhmm *h)
{
	if (!h->status)
		return;
	if (h->status_running) {
		atomic_store(&h->status_stop, true);
		/* The thread waits on req: move it so a wait not yet begun
		 * returns at once, then wake one already asleep. */
		atomic_fetch_add(&h->status->req, 1);
		sfutex_wake(&h->status->req);
		pthread_join(h->status_tid, NULL);
	}
	shm_unlink(h->status_name);
	/* The counters lived there: keep their last values for the (closed)
	 * context's remaining life, which is only its free. */
	memcpy(h->stats_local, (void *)h->status->stats, sizeof(h->stats_local));
	h->stats = h->stats_local;
	munmap(h->status, sizeof(*h->status));
	h->status = NULL;
}
