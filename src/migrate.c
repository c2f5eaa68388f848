/* SPDX-License-Identifier: MIT */
/*
 * Migration between system memory and device memory.
 *
 * Contract: callers lock every page first (PTE_BUSY, ascending addresses)
 * and pass them sorted; these functions move the data, fill in each page's
 * new entry value and error, and never unlock.  A page whose move failed
 * keeps its old value: the data stays where it was.
 *
 * System → device takes the page away from the CPU atomically, so a
 * racing CPU write either lands before the move (and travels) or faults
 * and waits for the page lock (then finds the page on the device and
 * brings it back):
 *   - UFFDIO_MOVE of the PTEs into a HOST_BACKED pool: zero copy;
 *   - otherwise write-protect, read through /proc/self/mem, copy into the
 *     device, then MADV_DONTNEED (our own REMOVE event is recognised and
 *     ignored).  Also used for pages MOVE refuses (shared after fork).
 * Device → system installs the page with UFFDIO_MOVE or UFFDIO_COPY, which
 * also wakes every thread waiting on it.
 */
#include "internal.h"
#include "probes.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static bool dev_failing(const struct uhmm_device *d)
{
	return atomic_load(&((struct uhmm_device *)d)->fail) & (UHMM_DUMMY_FAIL_COPY | UHMM_DUMMY_LOST);
}

/* Length of the run starting at p[0]: consecutive addresses in one block,
 * and consecutive slots when `slots` (one MOVE/COPY covers it). */
static size_t run_len(const struct mpage *p, size_t n, bool slots)
{
	struct uhmm_devmem *m = devmem_of(p[0].dp);
	size_t k = 1;
	while (k < n && k < BATCH_PAGES && p[k].addr == p[k - 1].addr + PAGE_SIZE &&
	       devmem_of(p[k].dp) == m && (!slots || p[k].dp == p[k - 1].dp + 1) &&
	       !(atomic_load(p[k].e) & PTE_MARKS))
		k++;
	return k;
}

/*
 * In a gate section: keep only the pages no event touched since they were
 * locked (an event marks a busy entry); the others are unlocked at once,
 * which applies the marks, and counted in *dropped.  Returns how many
 * were kept (p is compacted).
 */
size_t mpages_recheck(struct uhmm *h, struct mpage *p, size_t n, size_t *dropped)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (atomic_load(p[i].e) & PTE_MARKS) {
			PTRACE(RECHECK_DROP, p[i].e, p[i].addr, 0, atomic_load(p[i].e), 0);
			if (p[i].dp && pte_state(p[i].old) == UHMM_STATE_SYSTEM)
				dpage_put(p[i].dp); /* allocated for it, never filled */
			page_unlock(h, p[i].e, p[i].old);
			if (dropped)
				(*dropped)++;
			continue;
		}
		p[k++] = p[i];
	}
	return k;
}

/* ---- copy buffers ---- */

_Static_assert(UHMM_DMA_BUF_BYTES == BATCH_PAGES * PAGE_SIZE, "a run fits a device's DMA buffer");

#define DEV_BUF (-2) /* copy_buf_get's slot: the device's own DMA buffer */

/* A buffer for one run copied through device d: the device's DMA buffer
 * when it offers one (its copy then needs no bounce buffer), else ours. */
static char *copy_buf_get(struct uhmm *h, struct uhmm_device *d, int *slot)
{
	if (d->ops.dma_buf_get) {
		char *b = d->ops.dma_buf_get(d);
		if (b) {
			*slot = DEV_BUF;
			return b;
		}
	}
	return staging_get(h, slot);
}

static void copy_buf_put(struct uhmm *h, struct uhmm_device *d, char *buf, int slot)
{
	if (slot == DEV_BUF)
		d->ops.dma_buf_put(d, buf);
	else if (slot >= 0)
		staging_put(h, buf, slot);
}

/*
 * UFFDIO_MOVE can move a page and still count it as not moved.  Seen on
 * Linux 6.18 (tests/stress/uffd_move_check.c reproduces it in a few
 * thousand tries): while a page that a fork shared with a child (since
 * exited) is moved, another thread writes to it (a copy-on-write fault);
 * the page ends up at its destination, yet the call fails with EEXIST and
 * its count leaves the page out (apparently the kernel retries the page
 * and finds the destination it has just filled).  Believing the count, a
 * migration to a device kept such a page "in system memory" although its
 * CPU mapping was gone, and freed the pool slot that held its data: the
 * next access zero-filled it (RELIABILITY.md, finding 17).
 *
 * So after an EEXIST the page at the failing offset is looked at where it
 * was and where it was going (through /proc/self/mem: nothing faults,
 * allowed in a gate section): gone from its source and present at its
 * destination, it moved.  The caller holds the page lock and the gate, so
 * nothing else took it, with one exception when the source is managed
 * memory: an munmap or mremap whose event is pending, racing a destination
 * that was not empty (a device leaves the zero page in a pool slot it
 * touched while free).  So a pool slot holding the zero page is never
 * taken for a move out of managed memory.  That is safe either way: had
 * the page been the zero page and moved, it is missing and "in system
 * memory", and the next access zero-fills it, which is what it held.
 */
static bool moved_unreported(uintptr_t dst, uintptr_t src, bool from_pool)
{
	char c;
	if (procmem_read(&c, src, 1) == 1 || procmem_read(&c, dst, 1) != 1)
		return false;
	if (!from_pool && page_is_zero(dst) == 1)
		return false;
	TRACE(TR_MOVE_UNREPORTED, dst, src, PAGE_SIZE, from_pool);
	if (unlikely(atomic_load_explicit(&g_trace_on, memory_order_relaxed))) {
		/* May run in the SIGBUS handler: no stdio stream. */
		char msg[128];
		int n = snprintf(msg, sizeof(msg), "uhmm: UFFDIO_MOVE moved %#lx to %#lx but failed "
		                 "with EEXIST: taken as moved\n", (unsigned long)src, (unsigned long)dst);
		if (n > 0 && write(STDERR_FILENO, msg, (size_t)MIN(n, (int)sizeof(msg) - 1)) < 0)
			(void)0;
	}
	return true;
}

/* ---- device → system ---- */

static void run_home(struct uhmm *h, struct mpage *p, size_t k)
{
	struct uhmm_devmem *m = devmem_of(p[0].dp);
	struct uhmm_device *d = m->dev;
	size_t len = k * PAGE_SIZE, done = 0;
	int r;

	if (dev_failing(d)) {
		r = -EIO;
	} else if (m->host_registered) {
		uintptr_t slots = (uintptr_t)dpage_host(m, p[0].dp);
		for (;;) {
			size_t more = 0;
			r = uffd_move(h->uffd, p[0].addr + done, slots + done, len - done, &more);
			stat_add(h, ST_MOVE_CALLS, 1);
			done += more;
			/* Only our MOVE empties a slot in use (see above). */
			if (r != -EEXIST || !moved_unreported(p[0].addr + done, slots + done, true))
				break;
			done += PAGE_SIZE;
			r = 0;
			if (done == len)
				break;
		}
		if (r && r != -EEXIST) {
			/* UFFDIO_MOVE wants both mappings alike (a read-only range
			 * is not): copy the rest; those slots are emptied on reuse. */
			size_t more = 0;
			r = uffd_copy(h->uffd, p[0].addr + done, dpage_host(m, p[0].dp) + done,
			              len - done, false, &more);
			stat_add(h, ST_COPY_CALLS, 1);
			for (size_t i = done / PAGE_SIZE; i < (done + more) / PAGE_SIZE; i++)
				p[i].copied = true;
			done += more;
		}
	} else if (m->host) {
		r = uffd_copy(h->uffd, p[0].addr, dpage_host(m, p[0].dp), len, false, &done);
		stat_add(h, ST_COPY_CALLS, 1);
		/* The pool is not registered (no MOVE): emptying its slots raises
		 * no event, so do it now, one call for the run, and the host does
		 * not keep a second copy of what came home. */
		if (done && m->fd < 0)
			madvise(dpage_host(m, p[0].dp), done, MADV_DONTNEED);
	} else {
		size_t idx[BATCH_PAGES];
		int slot;
		char *buf = copy_buf_get(h, d, &slot);
		if (!buf) {
			r = -ENOMEM;
		} else {
			for (size_t i = 0; i < k; i++)
				idx[i] = dpage_index(m, p[i].dp);
			r = d->ops.copy_from_device(d, buf, m, idx, k);
			if (!r)
				r = uffd_copy(h->uffd, p[0].addr, buf, len, false, &done);
			copy_buf_put(h, d, buf, slot);
		}
		stat_add(h, ST_COPY_CALLS, 1);
	}
	for (size_t i = 0; i < k; i++)
		p[i].err = i * PAGE_SIZE < done ? 0 : (r ? r : -EIO);
	if (r == -EEXIST) /* a page is mapped where the table says DEVICE */
		PTRACE_ANOMALY(p[0].addr + done);
}

void migrate_to_system(struct uhmm *h, struct mpage *p, size_t n, const struct uhmm_device *initiator)
{
	if (!n)
		return;
	for (size_t i = 0; i < n; i++) {
		p[i].dp = pte_dpage(p[i].old);
		dpage_check(h, p[i].dp, p[i].addr, "migrate_to_system");
	}
	mirror_invalidate(h, p[0].addr, p[n - 1].addr + PAGE_SIZE, UHMM_EVENT_MIGRATE, initiator);
	for (size_t i = 0; i < n;) {
		struct uhmm_devmem *m = devmem_of(p[i].dp);
		size_t k = run_len(p + i, n - i, m->host != NULL);
		run_home(h, p + i, k);
		i += k;
	}
	size_t moved = 0;
	for (size_t i = 0; i < n; i++) {
		PTRACE(MIG_SYS, p[i].e, p[i].addr, 0, p[i].err, (uintptr_t)p[i].dp);
		if (p[i].err) {
			p[i].new = p[i].old;
			continue;
		}
		struct uhmm_devmem *m = devmem_of(p[i].dp);
		p[i].new = UHMM_STATE_SYSTEM;
		if (m->host && m->fd < 0 && !p[i].copied)
			dpage_put_clean(p[i].dp); /* its slot is empty (moved, or emptied above) */
		else
			dpage_put(p[i].dp);
		moved++;
	}
	stat_add(h, ST_TO_SYSTEM, moved);
}

/* ---- system → device ---- */

/*
 * Our own changes to registered mappings (MADV_DONTNEED in the copy
 * fallback, mmap/mremap of coherent granules) raise REMOVE/UNMAP events
 * that are ours, not the application's.  The application may discard the
 * same pages at the same time (its madvise raises the same event, for the
 * same range when the page is alone in its mapping), so an event inside
 * the interval is not necessarily ours.  Our change raises exactly one
 * event per page (one per mapping it spans, over that mapping's part), so
 * the service thread skips, for each page, the first event that covers it
 * and applies any other: when both discarded a page, which of the two is
 * skipped makes no difference.  An UNMAP is never a discard's.  The kernel
 * call returns as soon as the service thread has *read* the event, so the
 * marker stays until the batch that read it was handled.
 */
void self_change_begin(struct uhmm *h, uintptr_t start, size_t len, bool unmap)
{
	pthread_mutex_lock(&h->selfremove_lock);
	size_t n = MIN(len / PAGE_SIZE, (size_t)BATCH_PAGES);
	pthread_mutex_lock(&h->selfremove_mu);
	for (size_t i = 0; i < BATCH_PAGES / 64; i++)
		h->selfremove_due[i] = h->selfremove_again[i] = 0;
	for (size_t i = 0; i < n; i++)
		h->selfremove_due[i / 64] |= 1ULL << (i % 64);
	h->selfremove_start = start;
	h->selfremove_end = start + n * PAGE_SIZE;
	h->selfremove_unmap = unmap;
	pthread_mutex_unlock(&h->selfremove_mu);
}

void self_change_end(struct uhmm *h)
{
	uint64_t seq = atomic_load(&h->svc_seq);
	if (seq & 1)
		while (atomic_load(&h->svc_seq) == seq)
			sched_yield();
	pthread_mutex_lock(&h->selfremove_mu);
	h->selfremove_start = h->selfremove_end = 0;
	pthread_mutex_unlock(&h->selfremove_mu);
	pthread_mutex_unlock(&h->selfremove_lock);
}

uintptr_t self_change_claim(struct uhmm *h, uintptr_t start, uintptr_t end, bool unmap,
                            uint64_t own[BATCH_PAGES / 64])
{
	memset(own, 0, BATCH_PAGES / 64 * sizeof(own[0]));
	pthread_mutex_lock(&h->selfremove_mu);
	uintptr_t s0 = h->selfremove_start, e0 = h->selfremove_end;
	bool any = false;
	if (e0 > s0 && (!unmap || h->selfremove_unmap)) {
		for (uintptr_t a = MAX(start, s0); a < MIN(end, e0); a += PAGE_SIZE) {
			size_t i = (a - s0) / PAGE_SIZE;
			uint64_t bit = 1ULL << (i % 64);
			if (h->selfremove_due[i / 64] & bit) {
				h->selfremove_due[i / 64] &= ~bit;
				own[i / 64] |= bit;
				any = true;
			} else if (!unmap && (h->selfremove_again[i / 64] & bit)) {
				h->selfremove_again[i / 64] &= ~bit;
				own[i / 64] |= bit;
				any = true;
			}
		}
	}
	pthread_mutex_unlock(&h->selfremove_mu);
	return any ? s0 : 0;
}

/*
 * MADV_DONTNEED acts on whatever is mapped at the addresses when it runs,
 * and we are out of the gate: an munmap or mremap of our pages may have
 * freed them and a new mapping taken them, whose data is not ours to
 * discard.  Right before it, write-protecting the range (which it is
 * already) succeeds only if our registered range is still there; it fails
 * with EAGAIN, and is retried, while an event is unread.  Where it fails
 * otherwise, page by page: a page whose range went away is left to its
 * event's marks.  (Between the check and the madvise a new mapping could
 * still take freed addresses: a window of two system calls, not closed.)
 */
/*
 * The kernel repeats a REMOVE: madvise drops the mmap lock while its event
 * is read, and if an munmap or mremap made a hole in the range meanwhile,
 * it discards up to the hole and raises a second REMOVE for the part of
 * the range after it, over pages its first event covered already.  An
 * UNMAP or REMAP (read in between) over part of our interval makes one
 * more event due for the pages after it that had theirs.
 */
void self_change_hole(struct uhmm *h, uintptr_t start, uintptr_t end)
{
	pthread_mutex_lock(&h->selfremove_mu);
	uintptr_t s0 = h->selfremove_start, e0 = h->selfremove_end;
	if (e0 > s0 && !h->selfremove_unmap && start < e0 && end > s0) {
		for (uintptr_t a = MAX(end, s0); a < e0; a += PAGE_SIZE) {
			size_t i = (a - s0) / PAGE_SIZE;
			uint64_t bit = 1ULL << (i % 64);
			if (!(h->selfremove_due[i / 64] & bit))
				h->selfremove_again[i / 64] |= bit;
		}
	}
	pthread_mutex_unlock(&h->selfremove_mu);
}

static void self_discard(struct uhmm *h, uintptr_t start, size_t len)
{
	self_change_begin(h, start, len, false);
	TRACE(TR_MADV, start, 0, len, 0);
	if (uffd_wp(h->uffd, start, len, true) == 0) {
		madvise((void *)start, len, MADV_DONTNEED);
	} else {
		for (uintptr_t a = start; a < start + len; a += PAGE_SIZE)
			if (uffd_wp(h->uffd, a, PAGE_SIZE, true) == 0)
				madvise((void *)a, PAGE_SIZE, MADV_DONTNEED);
	}
	self_change_end(h);
}

/* Copy + unmap for pages p[0..k) (one run of a block).  The write-protect
 * makes the copy the last word: a write after it waits on our page lock. */
static void copy_run_to_device(struct uhmm *h, struct mpage *p, size_t k)
{
	struct uhmm_devmem *m = devmem_of(p[0].dp);
	struct uhmm_device *d = m->dev;
	uintptr_t a = p[0].addr;
	size_t len = k * PAGE_SIZE;
	int r = 0;

	if (!h->use_wp || dev_failing(d)) {
		for (size_t i = 0; i < k; i++)
			p[i].err = -EIO;
		return;
	}
	r = uffd_wp(h->uffd, a, len, true);
	if (r) {
		for (size_t i = 0; i < k; i++)
			p[i].err = r;
		return;
	}
	int slot = -1;
	bool direct = m->host && !m->host_registered;  /* a plain pool: read straight into it */
	char *buf = direct ? dpage_host(m, p[0].dp) : copy_buf_get(h, d, &slot);
	if (!buf) {
		r = -ENOMEM;
		goto undo;
	}
	/* A page that is not there any more was discarded (madvise) or moved
	 * (mremap) meanwhile: which one is not known here, so the run is left
	 * where it is (skipped); the event that did it updates its state. */
	for (size_t off = 0; off < len;) {
		ssize_t got = procmem_read(buf + off, a + off, len - off);
		PTRACE(PROCMEM_READ, 0, a + off, len - off, *(uint64_t *)(buf + off), got);
		if (got <= 0) {
			r = got < 0 && got != -EIO ? (int)got : -ENOENT;
			goto undo;
		}
		off += (size_t)got;
	}
	if (m->host_registered) {
		char *slots = dpage_host(m, p[0].dp);
		for (size_t off = 0;;) {
			size_t done = 0;
			r = uffd_copy(h->uffd, (uintptr_t)slots + off, buf + off, len - off, false, &done);
			off += done;
			if (r != -EEXIST)
				break;
			/* A slot the device touched while free is mapped (zeros).
			 * Written through /proc/self/mem: a plain store to a slot
			 * that is missing would fault, and the service thread
			 * cannot serve it while we hold the gate. */
			if (procmem_write((uintptr_t)slots + off, buf + off, PAGE_SIZE) != (ssize_t)PAGE_SIZE) {
				r = -EIO;
				break;
			}
			off += PAGE_SIZE;
			if (off == len) {
				r = 0;
				break;
			}
		}
		if (r)
			goto undo; /* the pages stay; the slots are emptied on reuse */
	} else if (!m->host) {
		size_t idx[BATCH_PAGES];
		for (size_t i = 0; i < k; i++)
			idx[i] = dpage_index(m, p[i].dp);
		r = d->ops.copy_to_device(d, m, idx, buf, k);
		if (r)
			goto undo;
	}
	copy_buf_put(h, d, buf, slot);
	stat_add(h, ST_COPY_CALLS, 1);
	/* The discard waits for the service thread: out of the gate.  A page
	 * mremap moved or munmap took meanwhile was not discarded here (its
	 * CPU copy lives on, write-protected, at its new address, or is
	 * gone): that page stays in system memory. */
	unsigned depth = gate_pause(h);
	DEBUG_HOOK(DEBUG_FALLBACK_BEFORE_DISCARD, a, len);
	self_discard(h, a, len);
	DEBUG_HOOK(DEBUG_FALLBACK_AFTER_DISCARD, a, len);
	gate_resume(h, depth);
	/* Which of the two happened is told by the marks an mremap or munmap
	 * leaves on our entries, and its event may not be read yet: an
	 * mremap that moved the pages before our madvise (which then found
	 * nothing to discard) queues its REMAP after.  Until every such event
	 * is read the kernel fails userfaultfd calls with EAGAIN; once it is
	 * (in the gate: read means handled) the marks are complete.  Removing
	 * the write protection is that call (the pages are gone from here). */
again:
	while (uffd_wp(h->uffd, a, len, false) == -EAGAIN) {
		depth = gate_pause(h);
		gate_wait_service(h);
		gate_resume(h, depth);
	}
	/* And did our discard take the pages?  MADV_DONTNEED does not say:
	 * if the mapping at its start went away while it waited for its
	 * event to be read, it gives up (ENOMEM) and discards nothing; if
	 * the mapping was split meanwhile, it skips the part that left.  A
	 * page still present here (no event moved or unmapped it) stays in
	 * system memory: our copy is dropped. */
	bool present[BATCH_PAGES];
	if (pages_present(a, k, present))
		memset(present, 1, k * sizeof(present[0]));
	for (size_t i = 0; i < k; i++) {
		uint64_t v = atomic_load(p[i].e);
		if (!(v & PTE_REMAP)) {
			p[i].err = (v & PTE_UNMAPPED) ? -ENOENT : present[i] ? -EBUSY : 0;
			continue;
		}
		/* Moved before our discard (its CPU page lives on at the new
		 * address: it stays in system memory) or after it (the page is
		 * gone there: our copy on the device is its data).  The new
		 * address's entry is held for the move: nothing fills it.  The
		 * new address is where the page ends up: mremap may have moved
		 * it again meanwhile, even back here (remap_dest).
		 * Marks set after PTE_REMAP are about the old address (an
		 * mremap's own UNMAP of its source follows its REMAP): an
		 * UNMAPPED there says nothing about this page. */
		uintptr_t to;
		char c;
		p[i].err = !remap_dest(h, p[i].e, &to, NULL) || procmem_read(&c, to, 1) == 1 ? -ENOENT : 0;
	}
	/* The answers hold only if no mremap moved the pages while we looked
	 * (one moving them on, or back here, from where we looked): its
	 * event cannot have been read (we are in the gate), so the kernel
	 * still fails userfaultfd calls with EAGAIN.  Then look again, once
	 * its event is handled (RELIABILITY.md finding 27). */
	if (uffd_wp(h->uffd, a, len, false) == -EAGAIN)
		goto again;
	stat_add(h, ST_FALLBACK, k);
	return;
undo:
	copy_buf_put(h, d, buf, slot);
	uffd_wp(h->uffd, a, len, false); /* wakes writers that waited */
	for (size_t i = 0; i < k; i++)
		p[i].err = r ? r : -EIO;
}

/* ---- system → copy device, through the move-staging area (stage.c) ---- */

/*
 * Put pages p[0..k) taken into staging at st back where they belong: the
 * device copy failed, so the data stays in system memory.  In the gate,
 * the pages' addresses have their pages taken by us (nothing else fills a
 * busy page), so a MOVE back fails only while an event is unread (EAGAIN):
 * then, once it is handled, its marks say where the page went: an mremap
 * moved it (the data goes to the new address, unless it was discarded on
 * the way), an munmap or a discard took it, or another mapping was moved
 * over its address (PTE_INSTALL: its entry is handed to that page): the
 * data is not wanted any more.  A move refused for the mapping's sake
 * (EINVAL: an mprotect or mlock meanwhile) is done as a copy.  A page that
 * cannot be put back is poisoned: its next access fails rather than read
 * zeros.
 */
static void stage_return(struct uhmm *h, struct mpage *p, size_t k, char *st)
{
	for (size_t j = 0; j < k; j++) {
		uintptr_t src = (uintptr_t)st + j * PAGE_SIZE, dst = p[j].addr;
		for (;;) {
			uint64_t v = atomic_load(p[j].e);
			if (v & PTE_REMAP) {
				bool discarded;
				if (!remap_dest(h, p[j].e, &dst, &discarded) || discarded)
					break; /* moved, then unmapped or discarded */
			} else if (v & (PTE_DISCARD | PTE_UNMAPPED | PTE_INSTALL)) {
				break;
			}
			size_t done = 0;
			int r = uffd_move(h->uffd, dst, src, PAGE_SIZE, &done);
			stat_add(h, ST_MOVE_CALLS, 1);
			if (done == PAGE_SIZE || (r == -EEXIST && moved_unreported(dst, src, true)))
				break;
			if (r == -EINVAL) {
				r = uffd_copy(h->uffd, dst, (const void *)src, PAGE_SIZE, false, &done);
				stat_add(h, ST_COPY_CALLS, 1);
				if (done == PAGE_SIZE)
					break;
			}
			if (r == -EAGAIN) {
				unsigned depth = gate_pause(h);
				gate_wait_service(h);
				gate_resume(h, depth);
				continue;
			}
			PTRACE_ANOMALY(dst);
			p[j].poison = true;
			break;
		}
	}
}

/*
 * Copy the pages of p[0..n) taken into the staging slot (page i at
 * stage + i pages) into their devices, out of the gate: they are locked
 * and out of the page table, so nothing can change them, and an event
 * meanwhile only marks their entries (applied when they are unlocked,
 * after their data is on the device); the service thread reads on, and
 * the cleaner empties slots meanwhile.  One call per run of consecutive
 * staged pages of one block, through the device's DMA buffer where it
 * lends one.  A run whose copy fails goes back (in the gate again).
 */
static void stage_copy(struct uhmm *h, struct mpage *p, size_t n, char *stage)
{
	size_t idx[BATCH_PAGES];
	bool failed = false, any = false;
	for (size_t i = 0; i < n && !any; i++)
		any = p[i].staged;
	if (!any)
		return;
	unsigned depth = gate_pause(h);
	DEBUG_HOOK(DEBUG_STAGE_BEFORE_COPY, p[0].addr, n * PAGE_SIZE);
	for (size_t i = 0, j; i < n; i = j) {
		j = i + 1;
		if (!p[i].staged)
			continue;
		struct uhmm_devmem *m = devmem_of(p[i].dp);
		struct uhmm_device *d = m->dev;
		idx[0] = dpage_index(m, p[i].dp);
		while (j < n && p[j].staged && devmem_of(p[j].dp) == m) {
			idx[j - i] = dpage_index(m, p[j].dp);
			j++;
		}
		char *src = stage + i * PAGE_SIZE;
		char *buf = d->ops.dma_buf_get ? d->ops.dma_buf_get(d) : NULL;
		int r;
		if (buf) {
			memcpy(buf, src, (j - i) * PAGE_SIZE);
			r = d->ops.copy_to_device(d, m, idx, buf, j - i);
			d->ops.dma_buf_put(d, buf);
		} else {
			r = d->ops.copy_to_device(d, m, idx, src, j - i);
		}
		stat_add(h, ST_COPY_CALLS, 1);
		if (!r) {
			stat_add(h, ST_STAGED, j - i);
			continue;
		}
		for (size_t q = i; q < j; q++)
			p[q].err = r;
		failed = true;
	}
	gate_resume(h, depth);
	if (!failed)
		return;
	for (size_t i = 0, j; i < n; i = j) {
		j = i + 1;
		if (!p[i].staged || !p[i].err)
			continue;
		while (j < n && p[j].staged && p[j].err)
			j++;
		stage_return(h, p + i, j - i, stage + i * PAGE_SIZE);
	}
}

/*
 * UFFDIO_MOVE of the pages p[0..k) (consecutive addresses) to dst on
 * (consecutive: a host pool's slots, or a staging slot), each page's err
 * set as it goes: 0 moved, -ENOENT gone meanwhile (discarded or moved by
 * mremap: its event updates its state), -EAGAIN for the rest when the mm
 * is changing (gate.c: the caller does the window again once that event
 * is handled), -EXDEV shared with a fork child (with `unshare`: the caller
 * unshares and retries).  Returns where it stopped for any other refusal
 * (k if none), *why its errno: that page is left to the copy fallback.
 * staging: the destination is a staging slot, empty when claimed (a page
 * found there is ours), and moved pages are marked staged.
 */
static size_t move_out(struct uhmm *h, struct mpage *p, size_t k, uintptr_t dst, bool staging,
                       bool unshare, int *why)
{
	size_t i = 0;
	while (i < k) {
		size_t done = 0;
		int r = uffd_move(h->uffd, dst + i * PAGE_SIZE, p[i].addr, (k - i) * PAGE_SIZE, &done);
		stat_add(h, ST_MOVE_CALLS, 1);
		for (size_t j = 0; j < done / PAGE_SIZE; j++)
			p[i + j].err = 0, p[i + j].staged = staging;
		i += done / PAGE_SIZE;
		if (!r)
			break;
		/* EAGAIN: the mm is changing, or the kernel could not take
		 * this page (a large folio it failed to split: the fallback
		 * copies it).  A call that only checks the mm tells which. */
		if (r == -EAGAIN && (!h->use_wp || uffd_wp(h->uffd, p[i].addr, PAGE_SIZE, false) == -EAGAIN)) {
			for (; i < k; i++)
				p[i].err = -EAGAIN;
			break;
		}
		if (r == -ENOENT) {
			p[i++].err = -ENOENT;
			continue;
		}
		if (r == -EEXIST && moved_unreported(dst + i * PAGE_SIZE, p[i].addr, staging)) {
			p[i].staged = staging;
			p[i++].err = 0; /* the kernel moved it after all (see above) */
			continue;
		}
		if (r == -EBUSY && unshare) {
			p[i++].err = -EXDEV;
			continue;
		}
		*why = r;
		return i;
	}
	return k;
}

/*
 * p[0..k) (one run of a copy device's block) to the device: take the pages
 * out of the application's page table into staging at st (a racing CPU
 * write lands before, and travels, or faults and waits for the page lock);
 * stage_copy copies them later.  Returns how many pages were dealt with: a
 * page MOVE refuses goes through the copy fallback, which leaves the gate,
 * so the pages after it are left to the caller; a mapping MOVE refuses
 * (EINVAL: protection or mlock unlike the area's) takes the fallback for
 * the rest of the run, in one copy.
 */
static size_t stage_run_to_device(struct uhmm *h, struct mpage *p, size_t k, char *st, bool unshare)
{
	int why = 0;
	size_t i = move_out(h, p, k, (uintptr_t)st, true, unshare, &why);
	if (i == k)
		return k;
	if (why == -EINVAL) {
		copy_run_to_device(h, p + i, k - i);
		return k;
	}
	copy_run_to_device(h, p + i, 1);
	return i + 1;
}

/* Move p[0..k) or a first part of it; returns how many pages were dealt
 * with.  The copy fallback leaves the gate for a while: what follows a
 * page copied is left to the caller, to be checked again. */
static size_t run_to_device(struct uhmm *h, struct mpage *p, size_t k, char *st, bool unshare)
{
	struct uhmm_devmem *m = devmem_of(p[0].dp);
	if (st && !m->host && !dev_failing(m->dev))
		return stage_run_to_device(h, p, k, st, unshare);
	if (!m->host_registered || dev_failing(m->dev)) {
		copy_run_to_device(h, p, k);
		return k;
	}
	/* Into the pool's slots (consecutive: run_len). */
	int why = 0;
	size_t i = move_out(h, p, k, (uintptr_t)dpage_host(m, p[0].dp), false, unshare, &why);
	if (i == k)
		return k;
	/* Out of the gate meanwhile: an munmap may have freed the addresses
	 * that follow and a new mapping taken them (their entries carry the
	 * event's marks by now). */
	copy_run_to_device(h, p + i, 1);
	return i + 1;
}

void migrate_to_device(struct uhmm *h, struct mpage *p, size_t n, char *stage, bool unshare)
{
	if (!n)
		return;
	mirror_invalidate(h, p[0].addr, p[n - 1].addr + PAGE_SIZE, UHMM_EVENT_MIGRATE, NULL);
	for (size_t i = 0; i < n;) {
		if (atomic_load(p[i].e) & PTE_MARKS) {
			/* An event touched it while a copy run was out of the gate. */
			p[i++].err = -ENOENT;
			continue;
		}
		/* Page i of the window takes page i of the staging slot. */
		size_t k = run_len(p + i, n - i, !stage);
		i += run_to_device(h, p + i, k, stage ? stage + i * PAGE_SIZE : NULL, unshare);
	}
	if (stage)
		stage_copy(h, p, n, stage);
	size_t moved = 0;
	for (size_t i = 0; i < n; i++) {
		PTRACE(MIG_DEV, p[i].e, p[i].addr, 0, p[i].err, (uintptr_t)p[i].dp);
		if (p[i].poison) {
			/* Its data could not be put back (stage_return). */
			dpage_put(p[i].dp);
			p[i].new = UHMM_STATE_POISONED;
			stat_add(h, ST_POISONED, 1);
			continue;
		}
		if (p[i].err == 0) {
			dpage_set_vaddr(p[i].dp, p[i].addr);
			dpage_check(h, p[i].dp, p[i].addr, "migrate_to_device");
			p[i].new = pte_make(UHMM_STATE_DEVICE, p[i].dp, 0);
			moved++;
		} else {
			/* A failed copy may have filled the slot: empty it before reuse. */
			dpage_put(p[i].dp);
			p[i].new = p[i].old;
		}
	}
	stat_add(h, ST_TO_DEVICE, moved);
}

void mpage_unlock(struct uhmm *h, struct mpage *p)
{
	page_unlock(h, p->e, p->new);
}

/* ---- zero fill ---- */

static const char *zero_source(void)
{
	static const char *_Atomic zeros;
	const char *z = atomic_load(&zeros);
	if (!z) {
		/* A read-only anonymous mapping reads as zeros and costs nothing. */
		void *m = mmap(NULL, BATCH_PAGES * PAGE_SIZE, PROT_READ,
		               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (m == MAP_FAILED)
			return NULL;
		const char *expected = NULL;
		if (!atomic_compare_exchange_strong(&zeros, &expected, m)) {
			munmap(m, BATCH_PAGES * PAGE_SIZE);
			return expected;
		}
		z = m;
	}
	return z;
}

/* *done: pages from addr on that are mapped now (a page found already
 * mapped counts: someone populated it).  Stops at the first other error. */
int populate_zero(struct uhmm *h, uintptr_t addr, size_t n, bool write, size_t *done_pages)
{
	size_t len = n * PAGE_SIZE, done = 0;
	const char *z = write ? zero_source() : NULL;
	int r = 0;
	if (write && !z)
		r = -ENOMEM;
	while (!r && done < len) {
		size_t more = 0;
		r = write ? uffd_copy(h->uffd, addr + done, z, len - done, false, &more)
		          : uffd_zeropage(h->uffd, addr + done, len - done, &more);
		done += more;
		if (r == -EEXIST && done < len) {
			done += PAGE_SIZE; /* already there */
			r = 0;
		}
	}
	stat_add(h, ST_ZERO_FILLED, done / PAGE_SIZE);
	*done_pages = done / PAGE_SIZE;
	return done == len ? 0 : r;
}

/* ---- bringing ranges home ---- */

struct home_arg {
	struct uhmm *h;
	struct uhmm_device *only;
	uintptr_t addrs[BATCH_PAGES];
	size_t n;
	int failed;
};

static void home_flush(struct home_arg *ha)
{
	struct mpage p[BATCH_PAGES];
	struct uhmm *h = ha->h;
	/* Pages the kernel refused while the mm was changing are tried again
	 * once that event is handled (never reported as failed for it). */
	while (ha->n) {
		size_t k = 0, rest = ha->n;
		for (size_t i = 0; i < ha->n; i++) {
			_Atomic uint64_t *e = ptable_entry(&h->pt, ha->addrs[i], false);
			uint64_t v;
			if (!k) {
				v = pte_lock(e);
			} else if (!pte_trylock(e, &v)) {
				/* Never wait while holding others (see
				 * migrate_window): the rest is the next batch. */
				rest = i;
				break;
			}
			if (pte_state(v) != UHMM_STATE_DEVICE ||
			    (ha->only && devmem_of(pte_dpage(v))->dev != ha->only)) {
				page_unlock(h, e, v);
				continue;
			}
			p[k++] = (struct mpage){ .addr = ha->addrs[i], .e = e, .old = v };
		}
		bool entered = gate_enter(h);
		k = mpages_recheck(h, p, k, NULL);
		migrate_to_system(h, p, k, NULL);
		gate_exit(h, entered);
		size_t again = 0;
		for (size_t i = 0; i < k; i++) {
			if (p[i].err == -EAGAIN)
				ha->addrs[again++] = p[i].addr;
			else if (p[i].err)
				ha->failed++;
			mpage_unlock(h, &p[i]);
		}
		if (k)
			wake_range(h, p[0].addr, p[k - 1].addr + PAGE_SIZE - p[0].addr);
		/* again <= k <= rest: the pages not locked yet follow. */
		memmove(&ha->addrs[again], &ha->addrs[rest], (ha->n - rest) * sizeof(ha->addrs[0]));
		ha->n = again + (ha->n - rest);
		if (again)
			gate_wait_service(h);
	}
}

static int home_visit(uintptr_t addr, _Atomic uint64_t *e, void *arg)
{
	struct home_arg *ha = arg;
	/* Lock-free: the block named by the entry is looked at in an EBR
	 * section (devmem.c, "Lifetimes" (c)). */
	unsigned tok = ebr_enter();
	uint64_t v = atomic_load(e);
	bool coherent_here = pte_state(v) == UHMM_STATE_DEVICE_COHERENT &&
	                     (!ha->only || devmem_of(pte_dpage(v))->dev == ha->only);
	ebr_exit(tok);
	if (coherent_here) {
		if (ha->n)
			home_flush(ha);
		if (coherent_home(ha->h, addr & ~(uintptr_t)(UHMM_COHERENT_GRANULE - 1)))
			ha->failed++;
		return 0;
	}
	/* A busy page may be on its way to a device: check it under the lock. */
	if (pte_state(v) != UHMM_STATE_DEVICE && !(v & PTE_BUSY))
		return 0;
	if (ha->n && (ha->n == BATCH_PAGES || addr != ha->addrs[ha->n - 1] + PAGE_SIZE))
		home_flush(ha);
	ha->addrs[ha->n++] = addr;
	return 0;
}

int migrate_range_home(struct uhmm *h, uintptr_t start, uintptr_t end, struct uhmm_device *only)
{
	struct home_arg *ha = malloc(sizeof(*ha));
	if (!ha)
		return -ENOMEM;
	ha->h = h;
	ha->only = only;
	ha->n = 0;
	ha->failed = 0;
	ptable_walk(&h->pt, start, end, home_visit, ha);
	if (ha->n)
		home_flush(ha);
	int r = ha->failed ? -EBUSY : 0;
	free(ha);
	return r;
}

int migrate_dpage_home(struct uhmm *h, struct uhmm_dpage *dp)
{
	uintptr_t va = dpage_vaddr(dp);
	if (dpage_ref(dp) == 0 || !va)
		return -EAGAIN;
	_Atomic uint64_t *e = ptable_entry(&h->pt, va, false);
	if (!e)
		return -EAGAIN;
	uint64_t v = pte_lock(e);
	if (pte_state(v) == UHMM_STATE_DEVICE_COHERENT && pte_dpage(v) == dp) {
		page_unlock(h, e, v);
		return coherent_home(h, va & ~(uintptr_t)(UHMM_COHERENT_GRANULE - 1));
	}
	if (pte_state(v) != UHMM_STATE_DEVICE || pte_dpage(v) != dp) {
		page_unlock(h, e, v);
		return -EAGAIN;
	}
	struct mpage p = { .addr = va, .e = e, .old = v };
	bool entered = gate_enter(h);
	if (mpages_recheck(h, &p, 1, NULL) == 0) {
		gate_exit(h, entered);
		return -EAGAIN; /* an event changed it: look again */
	}
	migrate_to_system(h, &p, 1, NULL);
	gate_exit(h, entered);
	mpage_unlock(h, &p);
	wake_range(h, va, PAGE_SIZE);
	return p.err;
}

/* ---- coherent memory: whole granules ---- */

static void migrate_coherent(struct uhmm *h, uintptr_t a, uintptr_t end, struct uhmm_device *to,
                             size_t *migrated, size_t *skipped)
{
	uintptr_t g0 = (a + UHMM_COHERENT_GRANULE - 1) & ~(uintptr_t)(UHMM_COHERENT_GRANULE - 1);
	if (g0 >= end || end - g0 < UHMM_COHERENT_GRANULE) {
		*skipped += (end - a) / PAGE_SIZE; /* no whole granule inside */
		return;
	}
	uintptr_t gend = end & ~(uintptr_t)(UHMM_COHERENT_GRANULE - 1);
	*skipped += (g0 - a + end - gend) / PAGE_SIZE;
	for (uintptr_t g = g0; g < gend; g += UHMM_COHERENT_GRANULE) {
		if (!range_covered(h, g, g + UHMM_COHERENT_GRANULE, false)) {
			*skipped += UHMM_COHERENT_GRANULE / PAGE_SIZE;
			continue;
		}
		int r = coherent_to_device(h, g, to);
		if (r >= 0)
			*migrated += UHMM_COHERENT_GRANULE / PAGE_SIZE;
		else
			*skipped += UHMM_COHERENT_GRANULE / PAGE_SIZE;
	}
}

/* Granules of [a, end) that are coherent come home whole (more than asked
 * for at the edges: they are in system memory afterwards either way). */
static int coherent_range_home(struct uhmm *h, uintptr_t a, uintptr_t end)
{
	int rc = 0;
	for (uintptr_t pa = a & ~(uintptr_t)(UHMM_COHERENT_GRANULE - 1); pa < end;
	     pa += UHMM_COHERENT_GRANULE) {
		_Atomic uint64_t *e = ptable_entry(&h->pt, MAX(pa, a), false);
		if (e && pte_state(atomic_load(e)) == UHMM_STATE_DEVICE_COHERENT) {
			int r = coherent_home(h, pa);
			if (r && !rc)
				rc = r;
		}
	}
	return rc;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/*
 * UFFDIO_MOVE takes only pages this process alone maps, and after a fork
 * every private page is shared with the child until one of them writes it
 * (even once the child has exited).  A write fault makes the page ours
 * again, with the same data, so the pages MOVE refused (-EXDEV, now
 * unlocked: the fault may need the service thread) are write-faulted with
 * MADV_POPULATE_WRITE, which changes no byte, and the window is done once
 * more; pages refused again go through the copy fallback (*unshared).  An
 * madvise over addresses that changed meanwhile is harmless: it only
 * populates or unshares what is there.
 */
static bool unshare_wanted(const struct mpage *p)
{
	/* Still in system memory and not held: a page another thread moved
	 * to a device meanwhile would be faulted back for nothing (and a
	 * poisoned one would fail the fault). */
	uint64_t v = atomic_load(p->e);
	return p->err == -EXDEV && pte_state(v) == UHMM_STATE_SYSTEM && !(v & PTE_BUSY);
}

static void unshare_pages(struct uhmm *h, const struct mpage *p, size_t n, bool *unshared)
{
	for (size_t i = 0, j; i < n; i = j) {
		j = i + 1;
		if (!unshare_wanted(&p[i]))
			continue;
		while (j < n && p[j].addr == p[j - 1].addr + PAGE_SIZE && unshare_wanted(&p[j]))
			j++;
		TRACE(TR_MADV, p[i].addr, 2, (j - i) * PAGE_SIZE, 0);
		if (madvise((void *)p[i].addr, (j - i) * PAGE_SIZE, MADV_POPULATE_WRITE) == 0)
			stat_add(h, ST_UNSHARED, j - i);
	}
	*unshared = true;
}

/*
 * One window [b, *be) of uhmm_migrate (at most a batch, clipped to its
 * range).  Returns true if the kernel refused a call because the mm was
 * changing: the caller does the window again (pages already where they
 * should be count as migrated then).  epoch != 0 (fault-ahead, to system
 * only): the window is given up, once its pages are locked, if a migration
 * to a device started since the request was queued.
 */
static bool migrate_window(struct uhmm *h, uintptr_t b, uintptr_t *bep, struct uhmm_device *to,
                           struct mpage *p, struct uhmm_dpage **dps, size_t *migrated,
                           size_t *skipped, size_t *moved, uint64_t epoch, bool *unshared)
{
	uintptr_t be = *bep;
	struct range_ent re;
	unsigned tok = ebr_enter();
	bool found = range_lookup(b, &re);
	ebr_exit(tok);
	if (found && re.persist) {
		/* Persistent memory never moves. */
		*bep = MIN(be, re.end);
		*skipped += (*bep - b) / PAGE_SIZE;
		return false;
	}
	if (found)
		*bep = be = MIN(be, re.end);
	if (to && !range_covered(h, b, be, false)) {
		/* Being removed: takes no new device pages. */
		*skipped += (be - b) / PAGE_SIZE;
		return false;
	}
	size_t n = 0;
	for (uintptr_t pa = b; pa < be; pa += PAGE_SIZE) {
		_Atomic uint64_t *e = ptable_entry(&h->pt, pa, false);
		if (!e || atomic_load(e) == 0) {
			/* Never populated: nothing to move either way. */
			if (to)
				(*skipped)++;
			else
				(*migrated)++;
			continue;
		}
		uint64_t v;
		if (!n) {
			v = pte_lock(e);
		} else if (!pte_trylock(e, &v)) {
			/* Never wait for a page while holding others: an entry
			 * held for an mremap in flight waits for its source's
			 * holder, who may be us (the window was bounded by a
			 * registry that may have changed since).  The window
			 * ends here; the next one starts with this page. */
			*bep = be = pa;
			break;
		}
		unsigned st = pte_state(v);
		bool want = to ? st == UHMM_STATE_SYSTEM : st == UHMM_STATE_DEVICE;
		if (want) {
			p[n++] = (struct mpage){ .addr = pa, .e = e, .old = v };
			continue;
		}
		if (to ? (st == UHMM_STATE_DEVICE && devmem_of(pte_dpage(v))->dev == to)
		       : (st == UHMM_STATE_SYSTEM || st == UHMM_STATE_NONE))
			(*migrated)++;
		else
			(*skipped)++;
		page_unlock(h, e, v);
	}
	if (epoch && atomic_load(&h->ahead.epoch) != epoch) {
		for (size_t i = 0; i < n; i++)
			page_unlock(h, p[i].e, p[i].old);
		*skipped += n;
		return false;
	}
	if (to) {
		/* Allocation may empty dirty pool slots (madvise): before the gate. */
		size_t got = devmem_alloc(to, n, dps);
		for (size_t i = got; i < n; i++) {
			page_unlock(h, p[i].e, p[i].old);
			(*skipped)++;
		}
		n = got;
		for (size_t i = 0; i < n; i++)
			p[i].dp = dps[i];
	}
	/* A copy device's window goes through a staging slot, claimed before
	 * the gate (emptying one waits for the service thread). */
	char *stage = NULL;
	int sslot = -1;
	if (to && n && !(to->flags & UHMM_DEVICE_HOST_BACKED))
		stage = stage_get(h, &sslot);
	bool entered = gate_enter(h);
	/* The memory checked above may have been unmapped or moved (and the
	 * addresses reused) before the gate closed: check again. */
	if (n && !(to ? range_covered(h, b, be, false) : range_covered(h, b, be, true))) {
		for (size_t i = 0; i < n; i++) {
			if (to)
				dpage_put(p[i].dp);
			page_unlock(h, p[i].e, p[i].old);
		}
		*skipped += n;
		n = 0;
	}
	n = mpages_recheck(h, p, n, skipped);
	if (to)
		migrate_to_device(h, p, n, stage, unshared && !*unshared);
	else
		migrate_to_system(h, p, n, NULL);
	gate_exit(h, entered);
	bool again = false, unshare = false;
	for (size_t i = 0; i < n; i++) {
		if (p[i].err == -EAGAIN || p[i].err == -EXDEV)
			again = true;
		else if (p[i].err)
			(*skipped)++;
		else
			(*migrated)++, *moved += 1;
		unshare |= p[i].err == -EXDEV;
		mpage_unlock(h, &p[i]);
	}
	if (stage)
		stage_put(h, sslot, n);
	if (unshare)
		unshare_pages(h, p, n, unshared);
	if (!to && n)
		wake_range(h, b, be - b);
	return again;
}

size_t migrate_home_ahead(struct uhmm *h, uintptr_t a, uintptr_t end, uint64_t epoch,
                          struct mpage *p)
{
	size_t pages = 0;
	for (uintptr_t b = a, be; b < end && atomic_load(&h->ahead.epoch) == epoch; b = be) {
		be = MIN(end, b + BATCH_PAGES * PAGE_SIZE);
		size_t mig, skip;
		for (;;) {
			mig = skip = 0;
			bool again = migrate_window(h, b, &be, NULL, p, NULL, &mig, &skip, &pages, epoch, NULL);
			if (!again)
				break;
			gate_wait_service(h);
		}
	}
	return pages;
}

/* ---- the public call ---- */

/* private_only: migrate page by page into `to`'s private (unaddressable)
 * blocks even if `to` has coherent memory, bringing coherent granules of
 * the range home first (see migrate_private). */
static int migrate_range(struct uhmm *h, void *addr, size_t len, struct uhmm_device *to,
                         bool private_only, struct uhmm_migrate_result *res)
{
	if (!h)
		return -EINVAL;
	if (h->pid != getpid())
		return -ECHILD;
	service_quiesce(h);
	int r = check_span(addr, len);
	if (r)
		return r;
	if (to && to->h != h)
		return -EINVAL;
	uintptr_t a = (uintptr_t)addr, end = a + len;
	if (!range_covered_any(h, a, end) && !range_covered(h, a, end, true))
		range_grow_span(h, a, end); /* perhaps grown in place by mremap */
	if (!(to == NULL ? range_covered_any(h, a, end) || range_covered(h, a, end, true)
	                 : range_covered_any(h, a, end)))
		return -EINVAL;
	if (to) {
		ahead_cancel(h); /* before any page is locked: see ahead.c */
		pthread_rwlock_rdlock(&h->fork_lock);
		if (h->mode == UHMM_FAULT_SIGBUS)
			sigbus_install(); /* still first in line (a test framework may have replaced it) */
	}
	struct mpage *p = malloc(BATCH_PAGES * sizeof(*p));
	struct uhmm_dpage **dps = malloc(BATCH_PAGES * sizeof(*dps));
	size_t migrated = 0, skipped = 0;
	if (!p || !dps) {
		r = -ENOMEM;
		goto out;
	}
	if (to && to->coherent && !private_only) {
		migrate_coherent(h, a, end, to, &migrated, &skipped);
		goto done;
	}
	if (!to || private_only)
		coherent_range_home(h, a, end);
	for (uintptr_t b = a, be; b < end; b = be) {
		be = MIN(end, b + BATCH_PAGES * PAGE_SIZE);
		size_t mig, skip, moved_now = 0;
		bool unshared = false;
		/* A window the mm was changing under (its event unread) is done
		 * again once that event is handled; one with pages shared with a
		 * fork child, once they are unshared. */
		for (;;) {
			mig = skip = 0;
			bool was = unshared;
			if (!migrate_window(h, b, &be, to, p, dps, &mig, &skip, &moved_now, 0, &unshared))
				break;
			if (unshared == was)
				gate_wait_service(h);
		}
		migrated += mig;
		skipped += skip;
	}
done:
	stat_add(h, ST_SKIPPED, skipped);
	if (to && !(to->flags & UHMM_DEVICE_HOST_BACKED))
		stage_drain(h);
out:
	free(p);
	free(dps);
	if (to)
		pthread_rwlock_unlock(&h->fork_lock);
	if (!r && res) {
		res->migrated = migrated;
		res->skipped = skipped;
	}
	return r;
}

UHMM_API int uhmm_migrate(struct uhmm *h, void *addr, size_t len, struct uhmm_device *to,
                          struct uhmm_migrate_result *res)
{
	struct uhmm_migrate_result own = { 0 }, *out = res ? res : &own; /* probes: the counts */
	UHMM_PROBE(migrate_start, addr, len, to ? to->name : "system");
	int rc = migrate_range(h, addr, len, to, false, out);
	UHMM_PROBE(migrate_end, addr, len, rc ? 0 : out->migrated, rc ? 0 : out->skipped,
	           to ? to->name : "system", rc);
	return rc;
}

int migrate_private(struct uhmm *h, void *addr, size_t len, struct uhmm_device *to,
                    struct uhmm_migrate_result *res)
{
	return migrate_range(h, addr, len, to, true, res);
}

/* ---- bringing everything home from a fatal-signal handler ---- */

/* Tries per busy page: another thread's migration of it ends in well
 * under this many yields; a lock its holder will never release (the
 * interrupted thread's own) must not hang a dying process. */
#define EVAC_TRIES 10000

struct evac {
	struct uhmm *h;
	size_t failed;
};

static int evac_visit(uintptr_t addr, _Atomic uint64_t *e, void *arg)
{
	struct evac *ev = arg;
	for (unsigned t = 0; pte_state(atomic_load(e)) == UHMM_STATE_DEVICE; t++) {
		if (t == EVAC_TRIES) {
			ev->failed++;
			break;
		}
		struct range_ent r;
		unsigned tok = ebr_enter();
		int rc = 0;
		if (range_lookup_managed(ev->h, addr, &r))
			/* A CPU fault's own path, as the SIGBUS handler takes it,
			 * but never sleeping on a page lock. */
			rc = fault_resolve(ev->h, &r, addr, FAULT_SERVICE, 0);
		ebr_exit(tok);
		if (rc == -EFAULT) {
			ev->failed++; /* the device cannot give it back */
			break;
		}
		if (rc)
			sched_yield(); /* busy, or the mm is changing: look again */
	}
	return 0;
}

UHMM_API int uhmm_evacuate_all(struct uhmm *h)
{
	if (!h)
		return -EINVAL;
	if (h->pid != getpid())
		return -ECHILD;
	struct evac ev = { .h = h, .failed = 0 };
	/* Lock-free walk of every entry ever created (nodes are never freed
	 * while the context lives); no allocation, no lock waited for. */
	ptable_walk(&h->pt, 0, UINTPTR_MAX & ~PAGE_MASK, evac_visit, &ev);
	return ev.failed ? -EBUSY : 0;
}
