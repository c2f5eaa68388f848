/* SPDX-License-Identifier: MIT */
/*
 * Managed ranges.  A process-wide registry of intervals [start, end), each
 * owned by one context, kept as a sorted array that is replaced, never
 * edited, and published with one atomic store; the old array is retired
 * through EBR.  Lookups (also from the SIGBUS handler) take no lock.
 * Writers serialise on g_lock and never wait for anything while holding
 * it (the event thread edits the registry too).
 */
#include "internal.h"

#include <time.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <unistd.h>

struct range_set {
	size_t n;
	struct range_ent e[];
};

static _Atomic(struct range_set *) g_ranges;
static int vmas_um(uintptr_t start, uintptr_t end, struct vma_info *out, int max);
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

bool range_lookup(uintptr_t addr, struct range_ent *out)
{
	struct range_set *s = atomic_load_explicit(&g_ranges, memory_order_acquire);
	if (!s)
		return false;
	size_t lo = 0, hi = s->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (addr < s->e[mid].start)
			hi = mid;
		else if (addr >= s->e[mid].end)
			lo = mid + 1;
		else {
			*out = s->e[mid];
			return true;
		}
	}
	return false;
}

bool range_covered(struct uhmm *h, uintptr_t start, uintptr_t end, bool allow_dying)
{
	unsigned tok = ebr_enter();
	uintptr_t at = start;
	struct range_ent r;
	while (at < end && range_lookup_managed(h, at, &r) && (allow_dying || !r.dying))
		at = r.end;
	ebr_exit(tok);
	return at >= end;
}

long range_list(struct uhmm *h, struct range_ent **out)
{
	unsigned tok = ebr_enter();
	struct range_set *s = atomic_load(&g_ranges);
	size_t n = 0, total = s ? s->n : 0;
	struct range_ent *v = malloc((total + 1) * sizeof(*v));
	if (!v) {
		ebr_exit(tok);
		return -ENOMEM;
	}
	for (size_t i = 0; i < total; i++)
		if (s->e[i].h == h && !s->e[i].pool && !s->e[i].persist)
			v[n++] = s->e[i];
	ebr_exit(tok);
	*out = v;
	return (long)n;
}

/* ---- writers (g_lock held) ---- */

static struct range_set *set_dup(size_t extra)
{
	struct range_set *old = atomic_load(&g_ranges);
	size_t n = old ? old->n : 0;
	struct range_set *s = malloc(sizeof(*s) + (n + extra) * sizeof(s->e[0]));
	if (!s)
		return NULL;
	s->n = n;
	if (n)
		memcpy(s->e, old->e, n * sizeof(s->e[0]));
	return s;
}

static int cmp_ent(const void *a, const void *b)
{
	const struct range_ent *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

_Atomic uint64_t g_registry_gen;

static void publish(struct range_set *s)
{
	qsort(s->e, s->n, sizeof(s->e[0]), cmp_ent);
	struct range_set *old = atomic_exchange_explicit(&g_ranges, s, memory_order_acq_rel);
	atomic_fetch_add_explicit(&g_registry_gen, 1, memory_order_release);
	ebr_retire(old);
}

/* Cut h's intervals out of [start, end) in s; may add one (a split).
 * s must have room for one more entry. */
static void set_cut(struct range_set *s, struct uhmm *h, uintptr_t start, uintptr_t end, bool pool)
{
	size_t n = s->n;
	for (size_t i = 0; i < n; i++) {
		struct range_ent *r = &s->e[i];
		if (r->h != h || r->pool != pool || r->persist || r->end <= start || r->start >= end)
			continue;
		if (r->start < start && r->end > end) {
			struct range_ent tail = *r;
			tail.start = end;
			r->end = start;
			s->e[s->n++] = tail;
		} else if (r->start < start) {
			r->end = start;
		} else if (r->end > end) {
			r->start = end;
		} else {
			r->start = r->end = 0; /* removed below */
		}
	}
	size_t k = 0;
	for (size_t i = 0; i < s->n; i++)
		if (s->e[i].start != s->e[i].end)
			s->e[k++] = s->e[i];
	s->n = k;
}

static int registry_insert_ent(struct range_ent ent);

static int registry_insert(struct uhmm *h, uintptr_t start, uintptr_t end, bool pool)
{
	return registry_insert_ent((struct range_ent){ .start = start, .end = end, .h = h, .pool = pool });
}

static int registry_insert_ent(struct range_ent ent)
{
	uintptr_t start = ent.start, end = ent.end;
	pthread_mutex_lock(&g_lock);
	struct range_set *old = atomic_load(&g_ranges);
	for (size_t i = 0; old && i < old->n; i++) {
		if (old->e[i].start < end && old->e[i].end > start) {
			pthread_mutex_unlock(&g_lock);
			return -EEXIST;
		}
	}
	struct range_set *s = set_dup(1);
	if (!s) {
		pthread_mutex_unlock(&g_lock);
		return -ENOMEM;
	}
	s->e[s->n++] = ent;
	publish(s);
	pthread_mutex_unlock(&g_lock);
	PTRACE(REG_INSERT, 0, start, end - start, ent.pool, 0);
	return 0;
}

int pool_register(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	return registry_insert(h, start, end, true);
}

int persist_register(struct uhmm_devmem *m, uintptr_t start, uintptr_t end)
{
	return registry_insert_ent((struct range_ent){ .start = start, .end = end, .h = m->dev->h,
	                                               .persist = true, .mem = m });
}

/* Drop persistent entries of h in [start,end) (all of mem's if mem). */
static void persist_drop(struct uhmm *h, uintptr_t start, uintptr_t end, struct uhmm_devmem *mem)
{
	pthread_mutex_lock(&g_lock);
	struct range_set *s = set_dup(0);
	if (s) {
		size_t k = 0;
		for (size_t i = 0; i < s->n; i++) {
			struct range_ent *r = &s->e[i];
			bool drop = r->persist && r->h == h &&
			            (mem ? r->mem == mem : (r->start >= start && r->end <= end));
			if (!drop)
				s->e[k++] = *r;
		}
		s->n = k;
		publish(s);
	}
	pthread_mutex_unlock(&g_lock);
}

void persist_forget(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	persist_drop(h, start, end, NULL);
}

void persist_forget_mem(struct uhmm_devmem *m)
{
	persist_drop(m->dev->h, 0, 0, m);
}

void registry_reset_child(void)
{
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	g_lock = fresh;
	atomic_store(&g_ranges, NULL); /* the parent's array: left alone, not freed */
}

bool range_covered_any(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	unsigned tok = ebr_enter();
	uintptr_t at = start;
	struct range_ent r;
	while (at < end && range_lookup(at, &r) && r.h == h && !r.pool && !r.dying)
		at = r.end;
	ebr_exit(tok);
	return at >= end;
}

static void registry_edit(struct uhmm *h, uintptr_t start, uintptr_t end, int op, uintptr_t to)
{
	PTRACE(REG_EDIT, 0, start, end - start, op, to);
	pthread_mutex_lock(&g_lock);
	struct range_set *s = set_dup(3);
	if (!s) {
		pthread_mutex_unlock(&g_lock);
		return; /* out of memory: the registry keeps the interval; faults there stay served */
	}
	if (op == 0 || op == 5) {      /* forget (5: a pool) */
		set_cut(s, h, start, end, op == 5);
	} else if (op == 1 || op == 2) { /* set / clear dying on exactly [start, end) */
		/* Split at the boundaries first so the flag covers only the interval. */
		size_t n = s->n;
		for (size_t i = 0; i < n; i++) {
			struct range_ent *r = &s->e[i];
			if (r->h != h || r->pool || r->persist || r->end <= start || r->start >= end)
				continue;
			if (r->start < start) {
				struct range_ent head = *r;
				head.end = start;
				r->start = start;
				s->e[s->n++] = head;
			}
			if (r->end > end) {
				struct range_ent tail = *r;
				tail.start = end;
				r->end = end;
				s->e[s->n++] = tail;
			}
			r->dying = op == 1;
		}
	} else {                       /* move [start,end) to `to` (mremap) */
		size_t len = end - start;
		if (op == 3)
			set_cut(s, h, start, end, false);
		set_cut(s, h, to, to + len, false);
		s->e[s->n++] = (struct range_ent){ .start = to, .end = to + len, .h = h };
	}
	publish(s);
	pthread_mutex_unlock(&g_lock);
}

int range_held_parts(struct uhmm *h, uintptr_t start, uintptr_t end, struct vma_info *out, int max)
{
	int n = 0;
	unsigned tok = ebr_enter();
	struct range_set *s = atomic_load(&g_ranges);
	for (size_t i = 0; s && i < s->n && n < max; i++) {
		const struct range_ent *r = &s->e[i];
		if (r->h != h || r->pool || r->persist || r->dying || r->end <= start || r->start >= end)
			continue;
		out[n++] = (struct vma_info){ .start = MAX(r->start, start), .end = MIN(r->end, end) };
	}
	ebr_exit(tok);
	return n;
}

void range_owed_occupied(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	struct vma_info part[32];
	int n = range_held_parts(h, start, end, part, 32);
	for (int i = 0; i < n; i++)
		owed_add(h, part[i].start, part[i].end);
}

void range_forget(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	registry_edit(h, start, end, 0, 0);
}

void pool_forget(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	registry_edit(h, start, end, 5, 0);
}

void range_move(struct uhmm *h, uintptr_t from, uintptr_t to, size_t len, bool keep_old)
{
	registry_edit(h, from, from + len, keep_old ? 4 : 3, to);
}

static void range_set_dying(struct uhmm *h, uintptr_t start, uintptr_t end, bool dying)
{
	registry_edit(h, start, end, dying ? 1 : 2, 0);
}

/* Wait until no migration to a device that could have missed the dying
 * flag is still running (they hold fork_lock shared). */
static void migrations_barrier(struct uhmm *h)
{
	pthread_rwlock_wrlock(&h->fork_lock);
	pthread_rwlock_unlock(&h->fork_lock);
}

/* ---- growth: memory the kernel added to a registered mapping ---- */

/*
 * mremap keeps a mapping's userfaultfd registration when it grows it: moved
 * (MREMAP_MAYMOVE, glibc realloc of a large block) the new VMA is registered
 * over its whole new length, yet the REMAP event carries the old length
 * only; grown in place there is no event at all.  The kernel then sends
 * the tail's faults to us, so the tail is ours to manage: one VMA has one
 * userfaultfd context, and a registered VMA that holds one of h's ranges
 * is registered with h's.  The parts of such a VMA that no range holds are
 * added to h's ranges (never populated: the tail is fresh memory, and
 * every fault there came to us and was held back until now).
 */

/* The gaps no range (of any context) holds in [start, end); up to max. */
static int registry_gaps(uintptr_t start, uintptr_t end, struct range_ent *gaps, int max)
{
	struct range_set *s = atomic_load(&g_ranges);
	int n = 0;
	uintptr_t at = start;
	for (size_t i = 0; s && i < s->n && at < end; i++) {
		const struct range_ent *r = &s->e[i];
		if (r->end <= at)
			continue;
		if (r->start >= end)
			break;
		if (r->start > at && n < max)
			gaps[n++] = (struct range_ent){ .start = at, .end = r->start };
		at = MAX(at, r->end);
	}
	if (at < end && n < max)
		gaps[n++] = (struct range_ent){ .start = at, .end = end };
	return n;
}

static bool touches_managed(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	unsigned tok = ebr_enter();
	struct range_set *s = atomic_load(&g_ranges);
	bool hit = false;
	for (size_t i = 0; s && i < s->n && !hit; i++) {
		const struct range_ent *r = &s->e[i];
		hit = r->h == h && !r->pool && !r->persist && r->start < end && r->end > start;
	}
	ebr_exit(tok);
	return hit;
}

int range_discover(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	struct vma_info v[16];
	int nv = vmas_um(start, end, v, 16), added = 0;
	/* What smaps showed may be an mremap whose event is not read yet (a
	 * mapping moved in, or back): the registry does not know it, and the
	 * memory added here would be taken for that mapping's when its event
	 * comes.  Events are read and handled on this thread only: none made
	 * but unread after the snapshot, and none read but not handled yet,
	 * means it showed only what the registry has. */
	if (nv > 0 && (h->svc_unhandled || uffd_events_pending(h->uffd, h->probe)))
		return 0;
	for (int i = 0; i < nv; i++) {
		if (!touches_managed(h, v[i].start, v[i].end))
			continue;
		struct range_ent gaps[16];
		pthread_mutex_lock(&g_lock);
		int ng = registry_gaps(v[i].start, v[i].end, gaps, 16);
		pthread_mutex_unlock(&g_lock);
		/* Entries left there describe memory that was mapped before
		 * (a discard applied late): not this tail's. */
		for (int k = 0; k < ng; k++)
			range_reset_nowait(h, gaps[k].start, gaps[k].end);
		pthread_mutex_lock(&g_lock);
		ng = registry_gaps(v[i].start, v[i].end, gaps, 16);
		struct range_set *s = ng ? set_dup((size_t)ng) : NULL;
		for (int k = 0; s && k < ng; k++) {
			TRACE(TR_RANGE_ADD, gaps[k].start, gaps[k].end, 2, 0);
			PTRACE(REG_INSERT, 0, gaps[k].start, gaps[k].end - gaps[k].start, 2, 0);
			s->e[s->n++] = (struct range_ent){ .start = gaps[k].start, .end = gaps[k].end, .h = h };
			added++;
		}
		if (s)
			publish(s);
		pthread_mutex_unlock(&g_lock);
	}
	return added;
}

/* The managed range of any context that ends nearest below addr (an
 * in-place growth extends the range just below it).  Inside ebr. */
bool range_lookup_below(uintptr_t addr, struct range_ent *out)
{
	struct range_set *s = atomic_load_explicit(&g_ranges, memory_order_acquire);
	size_t lo = 0, hi = s ? s->n : 0;
	while (lo < hi) { /* first entry starting above addr */
		size_t mid = (lo + hi) / 2;
		if (s->e[mid].start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i-- > 0;) {
		if (s->e[i].end > addr)
			return false; /* addr is inside it: not growth */
		if (!s->e[i].pool && !s->e[i].persist) {
			*out = s->e[i];
			return true;
		}
	}
	return false;
}

/*
 * Ask h's service thread to discover growth at addr and wait for it.  The
 * service thread does it between batches, so the registry it edits has
 * every event read so far applied.  Safe in the SIGBUS handler: grow_mu is
 * held only for a few stores, never while touching managed memory.
 */
bool range_grow_request(struct uhmm *h, uintptr_t addr)
{
	if (!h->service_running)
		return false;
	if (pthread_equal(pthread_self(), h->service))
		return range_discover(h, addr, addr + 1) > 0;
	uint64_t my = 0;
	for (int i = 0; i < 100000 && !my; i++) {
		pthread_mutex_lock(&h->grow_mu);
		if (h->grow_n < GROW_SLOTS) {
			h->grow_addr[h->grow_n++] = addr;
			my = atomic_fetch_add(&h->grow_req, 1) + 1;
		}
		pthread_mutex_unlock(&h->grow_mu);
		if (!my)
			sched_yield();
	}
	if (!my)
		return false;
	service_kick(h);
	for (long i = 0; atomic_load(&h->grow_done) < my && i < 10000000; i++) {
		if (atomic_load(&h->stopping))
			return false;
		sched_yield();
	}
	return atomic_load(&h->grow_done) >= my;
}

/* Service thread: serve the pending requests. */
bool range_grow_serve(struct uhmm *h)
{
	if (atomic_load(&h->grow_req) == atomic_load(&h->grow_done))
		return false;
	/* An mremap whose event is not read yet may have moved a managed
	 * mapping where the request looked (or away): the registry is not
	 * what the kernel has there until that event is handled, and memory
	 * added now would be taken for another mapping's when it is.  Serve
	 * the requests after the next batch (true: poll again soon). */
	if (uffd_events_pending(h->uffd, h->probe))
		return true;
	uintptr_t a[GROW_SLOTS];
	pthread_mutex_lock(&h->grow_mu);
	unsigned n = h->grow_n;
	memcpy(a, h->grow_addr, n * sizeof(a[0]));
	h->grow_n = 0;
	uint64_t req = atomic_load(&h->grow_req);
	pthread_mutex_unlock(&h->grow_mu);
	for (unsigned i = 0; i < n; i++) {
		struct range_ent r;
		unsigned tok = ebr_enter();
		bool known = range_lookup(a[i], &r);
		ebr_exit(tok);
		if (!known)
			range_discover(h, a[i], a[i] + 1);
	}
	atomic_store(&h->grow_done, req);
	return false;
}

/* An API call over [start, end) found part of it unmanaged: perhaps grown
 * in place (no event).  Discover it; the caller checks coverage again. */
void range_grow_span(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	for (int i = 0; i < 16; i++) {
		unsigned tok = ebr_enter();
		uintptr_t at = start;
		struct range_ent r;
		while (at < end && range_lookup(at, &r) && r.h == h)
			at = r.end;
		/* Growth extends a range upwards: with none of h's below, do
		 * not bother the service thread (nor read smaps). */
		bool below = at < end && range_lookup_below(at, &r) && r.h == h;
		ebr_exit(tok);
		if (!below || !range_grow_request(h, at))
			return;
		tok = ebr_enter();
		bool now = range_lookup(at, &r);
		ebr_exit(tok);
		if (!now)
			return;
	}
}

/* ---- adopting memory ---- */

static int scan_present(uintptr_t addr, size_t len, struct uhmm *h)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	uint64_t buf[512];
	int r = 0;
	for (uintptr_t a = addr; a < addr + len;) {
		size_t n = MIN((addr + len - a) >> PAGE_SHIFT, 512);
		ssize_t got = pread(fd, buf, n * 8, (off_t)((a >> PAGE_SHIFT) * 8));
		if (got != (ssize_t)(n * 8)) {
			r = got < 0 ? -errno : -EIO;
			break;
		}
		for (size_t i = 0; i < n; i++) {
			/* present (bit 63) or swapped (bit 62): the page holds data */
			if (!(buf[i] >> 62))
				continue;
			_Atomic uint64_t *e = ptable_entry(&h->pt, a + i * PAGE_SIZE, true);
			if (!e) {
				r = -ENOMEM;
				break;
			}
			uint64_t zero = 0;
			bool set = atomic_compare_exchange_strong(e, &zero, (uint64_t)UHMM_STATE_SYSTEM);
			TRACE(TR_SCAN, a + i * PAGE_SIZE, e, PAGE_SIZE, set ? 1 : zero);
		}
		a += n * PAGE_SIZE;
	}
	close(fd);
	return r;
}

/*
 * munmap returns once the service thread has read the UNMAP event, not
 * handled it, and the kernel may hand the same addresses straight back: a
 * conflict with a range whose event is being handled is stale.  Wait for
 * that batch (svc_seq odd → changes) and look again.
 */
static bool find_conflict(uintptr_t start, uintptr_t end, struct range_ent *out)
{
	unsigned tok = ebr_enter();
	struct range_set *set = atomic_load(&g_ranges);
	bool found = false;
	for (size_t i = 0; set && i < set->n && !found; i++) {
		if (set->e[i].start < end && set->e[i].end > start) {
			*out = set->e[i];
			found = true;
		}
	}
	ebr_exit(tok);
	return found;
}

/* The whole VMAs over [start, end) registered with some userfaultfd ("um"
 * in smaps), up to max. */
static int vmas_um(uintptr_t start, uintptr_t end, struct vma_info *out, int max)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	if (!f)
		return -errno;
	char line[512];
	unsigned long s0 = 0, e0 = 0;
	bool in = false;
	int n = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			s0 = a;
			e0 = b;
			in = s0 < end && e0 > start;
		} else if (in && !strncmp(line, "VmFlags:", 8) && strstr(line, " um") && n < max) {
			out[n++] = (struct vma_info){ .start = s0, .end = e0 };
		}
	}
	fclose(f);
	return n;
}

bool vma_registered(uintptr_t addr)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	if (!f)
		return true; /* cannot tell: assume a real overlap */
	char line[512];
	bool in = false, reg = false;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s0, e0;
		if (sscanf(line, "%lx-%lx ", &s0, &e0) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			if (in)
				break;
			in = addr >= s0 && addr < e0;
		} else if (in && !strncmp(line, "VmFlags:", 8)) {
			reg = strstr(line, " um") != NULL;
			break;
		}
	}
	fclose(f);
	return reg;
}

/*
 * An overlap with a registered range may be stale: the kernel unmaps first
 * and queues the UNMAP event after, and may hand the addresses to the next
 * mmap before the event is even queued.  Memory uhmm just mapped itself
 * (fresh) cannot really overlap; adopted memory does only if the kernel has
 * it registered with a userfaultfd.  A stale overlap is waited out.
 */
static int registry_insert_fresh(struct uhmm *h, uintptr_t start, uintptr_t end, bool fresh)
{
	/* Inserted dying: no migration to a device may take its pages until
	 * the entries are reset and the range registered (manage). */
	struct range_ent ent = { .start = start, .end = end, .h = h, .dying = true };
	int r = registry_insert_ent(ent);
	/* The UNMAP event is handled soon by the service thread of the
	 * context that managed it; bounded at about 5 s (then -EEXIST). */
	for (int i = 0; r == -EEXIST && i < 50000; i++) {
		struct range_ent c;
		if (find_conflict(start, end, &c)) {
			if (c.pool || c.persist)
				return -EEXIST;
			if (!fresh && i == 0 && vma_registered(MAX(start, c.start)))
				return -EEXIST; /* really managed */
			if (i < 1000)
				sched_yield();
			else
				nanosleep(&(struct timespec){ 0, 100000 }, NULL);
		}
		r = registry_insert_ent(ent);
	}
	if (r == -EEXIST) {
		struct range_ent c;
		if (find_conflict(start, end, &c))
			PTRACE(REG_INSERT, 0, c.start, c.end - c.start, 0xeee, (uintptr_t)c.h);
	}
	return r;
}

static int manage(struct uhmm *h, uintptr_t a, size_t len, bool adopt)
{
	/* The memory that was here before may have been unmapped with its
	 * UNMAP event still queued, or read and not yet handled: handled
	 * after we register, it would forget this range and drop its pages
	 * (the event can cover more than the registry held there).  A
	 * write-protect call fails with EAGAIN (and is retried) while an
	 * event is queued; then wait for the batch in hand. */
	TRACE(TR_RANGE_ADD, a, a + len, adopt, 0);
	if (h->use_wp)
		uffd_wp(h->uffd, a, len, false);
	service_quiesce(h);
	int r = registry_insert_fresh(h, a, a + len, !adopt);
	if (r)
		return r;
	/* Entries left from memory that used to be here (a discard applied
	 * late) must not describe the new memory. */
	range_reset_entries(h, a, a + len);
	uint64_t ioctls = 0;
	r = uffd_register(h->uffd, a, len, h->use_wp, &ioctls);
	if (r) {
		range_forget(h, a, a + len);
		return r == -EBUSY ? -EEXIST : -EINVAL;
	}
	if (adopt) {
		r = scan_present(a, len, h);
		if (r) {
			uffd_unregister(h->uffd, a, len);
			range_forget(h, a, a + len);
			return r;
		}
	}
	if (h->mode == UHMM_FAULT_SIGBUS)
		sigbus_install();
	range_set_dying(h, a, a + len, false);
	return 0;
}

UHMM_API int uhmm_range_add(struct uhmm *h, void *addr, size_t len)
{
	if (!h)
		return -EINVAL;
	service_quiesce(h);
	int r = check_span(addr, len);
	if (r)
		return r;
	uintptr_t a = (uintptr_t)addr;
	/* Only private anonymous memory, fully mapped: userfaultfd would
	 * accept shared memory, but migration semantics would be wrong there. */
	struct vma_info v[64];
	int n = maps_query(a, a + len, v, 64);
	if (n < 0)
		return n;
	uintptr_t at = a;
	for (int i = 0; i < n; i++) {
		if (v[i].start > at || v[i].shared || !v[i].anon)
			return -EINVAL;
		at = v[i].end;
	}
	if (at < a + len)
		return n == 64 ? -E2BIG : -EINVAL;
	return manage(h, a, len, true);
}

UHMM_API int uhmm_alloc(struct uhmm *h, size_t len, void **out)
{
	if (!h || !out || len == 0 || !aligned(len))
		return -EINVAL;
	/* Allocations of 2 MiB or more start 2 MiB-aligned: whole-PMD moves
	 * and 2 MiB granules (coherent memory) line up with the range. */
	size_t align = len >= HUGE_SIZE ? HUGE_SIZE : PAGE_SIZE;
	if (len + align < len)
		return -ENOMEM;
	char *raw = mmap(NULL, len + align - PAGE_SIZE, PROT_READ | PROT_WRITE,
	                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (raw == MAP_FAILED)
		return -ENOMEM;
	char *p = (char *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
	if (p > raw)
		munmap(raw, (size_t)(p - raw));
	if (align > PAGE_SIZE && p + len < raw + len + align - PAGE_SIZE)
		munmap(p + len, (size_t)(raw + len + align - PAGE_SIZE - (p + len)));
	int r = manage(h, (uintptr_t)p, len, false);
	if (r) {
		munmap(p, len);
		return r;
	}
	*out = p;
	return 0;
}

/* Reset entries of [start, end) to "unknown, never populated", freeing
 * device pages (free) — callers brought data home first unless freeing. */

static int reset_one(uintptr_t addr, _Atomic uint64_t *e, void *arg)
{
	struct uhmm *h = arg;
	if (atomic_load(e) == 0)
		return 0;
	PTRACE(RESET, e, addr, 0, atomic_load(e), 0);
	uint64_t v = pte_lock(e);
	if (pte_state(v) == UHMM_STATE_DEVICE || pte_state(v) == UHMM_STATE_DEVICE_COHERENT) {
		dpage_check(h, pte_dpage(v), addr, "range_reset_entries");
		dpage_put(pte_dpage(v));
	}
	page_unlock(h, e, 0);
	return 0;
}

int range_reset_entries(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	return ptable_walk(&h->pt, start, end, reset_one, h);
}

UHMM_API int uhmm_range_remove(struct uhmm *h, void *addr, size_t len)
{
	if (!h)
		return -EINVAL;
	service_quiesce(h);
	int r = check_span(addr, len);
	if (r)
		return r;
	uintptr_t a = (uintptr_t)addr, e = a + len;
	if (!range_covered(h, a, e, false))
		range_grow_span(h, a, e);
	if (!range_covered(h, a, e, false))
		return -ENOENT;
	TRACE(TR_RANGE_REMOVE, a, e, 0, 0);
	range_set_dying(h, a, e, true);
	migrations_barrier(h);
	r = migrate_range_home(h, a, e, NULL);
	if (r) {
		range_set_dying(h, a, e, false);
		return r;
	}
	mirror_invalidate(h, a, e, UHMM_EVENT_RANGE_REMOVE, NULL);
	uffd_unregister(h->uffd, a, len);
	range_forget(h, a, e);
	range_reset_entries(h, a, e);
	return 0;
}

UHMM_API int uhmm_free(struct uhmm *h, void *addr, size_t len)
{
	if (!h)
		return -EINVAL;
	service_quiesce(h);
	int r = check_span(addr, len);
	if (r)
		return r;
	uintptr_t a = (uintptr_t)addr, e = a + len;
	if (!range_covered(h, a, e, false))
		range_grow_span(h, a, e);
	if (!range_covered(h, a, e, false))
		return -EINVAL;
	range_set_dying(h, a, e, true);
	migrations_barrier(h);
	mirror_invalidate(h, a, e, UHMM_EVENT_UNMAP, NULL);
	uffd_unregister(h->uffd, a, len);
	range_forget(h, a, e);
	range_reset_entries(h, a, e);
	munmap(addr, len);
	return 0;
}

/* Close: every range of h comes home and is unregistered. */
int range_remove_locked_all(struct uhmm *h)
{
	struct range_ent *v;
	long n = range_list(h, &v);
	if (n < 0)
		return (int)n;
	int rc = 0;
	for (long i = 0; i < n; i++) {
		int r = uhmm_range_remove(h, (void *)v[i].start, v[i].end - v[i].start);
		if (r && !rc)
			rc = r;
	}
	free(v);
	return rc;
}

UHMM_API int uhmm_mprotect(struct uhmm *h, void *addr, size_t len, int prot)
{
	if (!h)
		return -EINVAL;
	int r = check_span(addr, len);
	if (r)
		return r;
	uintptr_t a = (uintptr_t)addr;
	/* Before: devices stop using the old protection.  After: a device
	 * fault that ran in between built entries from the old protection;
	 * the second invalidation drops them (and fails their read_retry). */
	mirror_invalidate(h, a, a + len, UHMM_EVENT_PROTECT, NULL);
	r = mprotect(addr, len, prot) ? -errno : 0;
	mirror_invalidate(h, a, a + len, UHMM_EVENT_PROTECT, NULL);
	return r;
}
