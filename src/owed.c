/* SPDX-License-Identifier: MIT */
/*
 * UNMAP events still due: which munmap an UNMAP event is about.
 *
 * The kernel unmaps, drops its lock and only then queues the UNMAP event,
 * so events of different threads reach us out of the order their changes
 * were made in: an munmap's UNMAP can come after an mremap moved another
 * region into the freed addresses (its REMAP), and even after that region
 * was moved away again.  The addresses in an event do not say which of
 * the mappings that lived there it is about.  Counting does:
 *
 *   Every mapping that leaves an address raises exactly one UNMAP for it:
 *   munmap (and mmap MAP_FIXED over it) one; a move (mremap without
 *   MREMAP_DONTUNMAP) a REMAP, then the UNMAP of its source from the same
 *   thread.  So at each address, the UNMAP events to come are one per
 *   mapping that left it and whose UNMAP has not been read yet.
 *
 * The count kept here, per address, is of those owed to mappings *other*
 * than the one the registry holds there now:
 *
 *   - a REMAP into addresses the registry still holds for this context:
 *     the mapping held there has gone (the kernel moves only into free
 *     addresses; MREMAP_FIXED's own unmap of the destination is queued and
 *     read before the REMAP), its UNMAP has not come: +1 there;
 *   - a move's source: its UNMAP follows the REMAP: +1 there (the registry
 *     holds nothing there any more, or a newer mapping moved in);
 *   - an UNMAP takes one from each part of it that has a count, and leaves
 *     those parts alone (the mapping there now is a newer one); the other
 *     parts are the mapping the registry holds there: dropped.
 *
 * Two UNMAPs due at one address (an older mapping's, late, and the
 * current one's) can come in either order: whichever comes first takes
 * the count, the second drops the mapping; both orders end the same.
 *
 * Every count is an UNMAP made and not read yet: when the kernel counts
 * none (uffd_events_pending) and none is held, what is left is stale and
 * dropped (owed_settle, after a batch).
 *
 * Owner: the context's service thread edits the counts (events are
 * handled there, in the order read); owed_lock makes a read from another
 * thread (tests, close) safe.  The counts live as long as the context.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* Disjoint intervals sorted by start, each with a count > 0. */
struct owed_part {
	uintptr_t start, end;
	unsigned count;
};

struct owed_set {
	size_t n, cap;
	struct owed_part p[];
};

/* With owed_lock: room for `more` parts (never shrinks). */
static bool owed_reserve(struct uhmm *h, size_t more)
{
	struct owed_set *s = h->owed;
	size_t n = s ? s->n : 0, cap = s ? s->cap : 0;
	if (n + more <= cap)
		return true;
	size_t ncap = MAX(16, 2 * (n + more));
	struct owed_set *ns = realloc(s, sizeof(*ns) + ncap * sizeof(ns->p[0]));
	if (!ns)
		return false;
	if (!s)
		ns->n = 0;
	ns->cap = ncap;
	h->owed = ns;
	return true;
}

/* With owed_lock: split the part that contains addr (strictly inside) in
 * two at addr.  One more part; room reserved by the caller. */
static void owed_split(struct owed_set *s, uintptr_t addr)
{
	for (size_t i = 0; i < s->n; i++) {
		struct owed_part *q = &s->p[i];
		if (q->start < addr && addr < q->end) {
			memmove(&s->p[i + 1], &s->p[i], (s->n - i) * sizeof(s->p[0]));
			s->n++;
			s->p[i].end = addr;
			s->p[i + 1].start = addr;
			return;
		}
		if (q->start >= addr)
			return;
	}
}

/* With owed_lock: drop parts whose count reached 0, merge equal
 * neighbours. */
static void owed_tidy(struct owed_set *s)
{
	size_t k = 0;
	for (size_t i = 0; i < s->n; i++) {
		if (!s->p[i].count)
			continue;
		if (k && s->p[k - 1].end == s->p[i].start && s->p[k - 1].count == s->p[i].count)
			s->p[k - 1].end = s->p[i].end;
		else
			s->p[k++] = s->p[i];
	}
	s->n = k;
}

void owed_add(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	if (start >= end)
		return;
	PTRACE(OWED, 0, start, end - start, 1, 0);
	pthread_mutex_lock(&h->owed_lock);
	/* Worst case: two splits and one new part per gap (n + 1 gaps). */
	if (!owed_reserve(h, 2 + (h->owed ? h->owed->n : 0) + 1)) {
		/* Out of memory: the UNMAP this was for will drop a newer
		 * mapping's pages, as before counts were kept (RELIABILITY.md
		 * finding 26 (d)). */
		pthread_mutex_unlock(&h->owed_lock);
		return;
	}
	struct owed_set *s = h->owed;
	owed_split(s, start);
	owed_split(s, end);
	size_t n0 = s->n;
	uintptr_t at = start;
	for (size_t i = 0; i < n0 && at < end; i++) {
		struct owed_part *q = &s->p[i];
		if (q->end <= at)
			continue;
		if (q->start >= end)
			break;
		if (q->start > at)
			s->p[s->n++] = (struct owed_part){ at, q->start, 1 };
		q->count++; /* inside [start, end): split above */
		at = q->end;
	}
	if (at < end)
		s->p[s->n++] = (struct owed_part){ at, end, 1 };
	if (s->n > n0) {
		/* New parts went at the end: sort them in. */
		for (size_t i = n0; i < s->n; i++) {
			struct owed_part x = s->p[i];
			size_t j = i;
			while (j > 0 && s->p[j - 1].start > x.start) {
				s->p[j] = s->p[j - 1];
				j--;
			}
			s->p[j] = x;
		}
	}
	owed_tidy(s);
	pthread_mutex_unlock(&h->owed_lock);
}

bool owed_take_next(struct uhmm *h, uintptr_t at, uintptr_t end, uintptr_t *ps, uintptr_t *pe)
{
	bool found = false;
	pthread_mutex_lock(&h->owed_lock);
	struct owed_set *s = h->owed;
	for (size_t i = 0; s && i < s->n; i++) {
		struct owed_part *q = &s->p[i];
		if (q->end <= at)
			continue;
		if (q->start >= end)
			break;
		*ps = MAX(q->start, at);
		*pe = MIN(q->end, end);
		found = true;
		break;
	}
	if (found) {
		if (owed_reserve(h, 2)) {
			s = h->owed;
			owed_split(s, *ps);
			owed_split(s, *pe);
			for (size_t i = 0; i < s->n; i++)
				if (s->p[i].start == *ps)
					s->p[i].count--;
			owed_tidy(s);
		} else {
			/* Cannot split: take one from the whole part.  Its other
			 * addresses then have one UNMAP less reserved; the next
			 * one there drops what is mapped (as before counts). */
			for (size_t i = 0; i < s->n; i++)
				if (s->p[i].start <= *ps && *ps < s->p[i].end)
					s->p[i].count--;
			owed_tidy(s);
		}
		PTRACE(OWED, 0, *ps, *pe - *ps, -1, 0);
	}
	pthread_mutex_unlock(&h->owed_lock);
	return found;
}

size_t owed_query(struct uhmm *h, uintptr_t addr)
{
	size_t c = 0;
	pthread_mutex_lock(&h->owed_lock);
	struct owed_set *s = h->owed;
	for (size_t i = 0; s && i < s->n; i++)
		if (s->p[i].start <= addr && addr < s->p[i].end)
			c = s->p[i].count;
	pthread_mutex_unlock(&h->owed_lock);
	return c;
}

bool owed_any(struct uhmm *h)
{
	pthread_mutex_lock(&h->owed_lock);
	bool any = h->owed && h->owed->n;
	pthread_mutex_unlock(&h->owed_lock);
	return any;
}

/* A count no UNMAP will take (a late REMAP past the wait, an allocation
 * failure) would spare the next real munmap there: a stale range.  Called
 * when no event can be due; each part dropped is traced. */
void owed_settle(struct uhmm *h)
{
	pthread_mutex_lock(&h->owed_lock);
	struct owed_set *s = h->owed;
	for (size_t i = 0; s && i < s->n; i++) {
		PTRACE(OWED, 0, s->p[i].start, s->p[i].end - s->p[i].start, 0, s->p[i].count);
		TRACE(TR_EV_UNMAP, s->p[i].start, s->p[i].end, s->p[i].count, 1);
	}
	if (s && s->n)
		atomic_fetch_add_explicit(&h->owed_cleared, 1, memory_order_relaxed);
	if (s)
		s->n = 0;
	pthread_mutex_unlock(&h->owed_lock);
}

void owed_destroy(struct uhmm *h)
{
	free(h->owed);
	h->owed = NULL;
	pthread_mutex_destroy(&h->owed_lock);
}
