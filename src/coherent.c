/* SPDX-License-Identifier: MIT */
/*
 * Coherent device memory (DEVICE | ALLOW_MIGRATION): the CPU addresses it
 * in place.  A block is a memory file (tmpfs); migrating a granule there
 * copies its data into the file and maps the file over the granule, so CPU
 * loads and stores go to device memory with no fault.  Migration back
 * copies out into an anonymous mapping and moves that over the granule
 * (mremap is atomic: no instant where the address is unmapped or empty).
 *
 * Granules are 2 MiB and aligned: one mapping per granule keeps the number
 * of kernel mappings bounded (see uhmm.h).  Writes are held off while data
 * is copied by userfaultfd write-protect (anonymous memory on the way in,
 * shmem on the way back); reads never stop.  Our own mmap/mremap over a
 * registered range raises an UNMAP event, which the service thread ignores
 * (self_change_*).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define GPAGES (UHMM_COHERENT_GRANULE / PAGE_SIZE)

/* Never waits for a page while holding others (an entry held for an
 * mremap in flight waits for its source's holder): at a busy page it lets
 * go of the others, waits for that one, and starts again. */
static int lock_granule(struct uhmm *h, uintptr_t g, _Atomic uint64_t **e, uint64_t *v)
{
	for (;;) {
		size_t i;
		for (i = 0; i < GPAGES; i++) {
			e[i] = ptable_entry(&h->pt, g + i * PAGE_SIZE, true);
			if (!e[i] || !pte_trylock(e[i], &v[i]))
				break;
		}
		if (i == GPAGES)
			return 0;
		_Atomic uint64_t *busy = e[i];
		while (i--)
			page_unlock(h, e[i], v[i]);
		if (!busy)
			return -ENOMEM;
		page_unlock(h, busy, pte_lock(busy));
	}
}

static void unlock_granule(struct uhmm *h, uintptr_t g, _Atomic uint64_t **e, uint64_t *v)
{
	for (size_t i = 0; i < GPAGES; i++)
		page_unlock(h, e[i], v[i]);
	wake_range(h, g, UHMM_COHERENT_GRANULE);
}

/* The one protection of the granule's mapping, or -1 if it is split. */
static int granule_prot(uintptr_t g)
{
	struct vma_info v[2];
	int n = maps_query(g, g + UHMM_COHERENT_GRANULE, v, 2);
	if (n != 1 || v[0].start > g || v[0].end < g + UHMM_COHERENT_GRANULE)
		return -1;
	return v[0].prot;
}

/* 1: already coherent on d; 0: moved; negative: skipped, nothing changed. */
int coherent_to_device(struct uhmm *h, uintptr_t g, struct uhmm_device *d)
{
	_Atomic uint64_t **e = malloc(GPAGES * sizeof(*e));
	uint64_t *v = malloc(GPAGES * sizeof(*v));
	struct uhmm_dpage **dp = malloc(GPAGES * sizeof(*dp));
	int r = -ENOMEM;
	if (!e || !v || !dp || lock_granule(h, g, e, v))
		goto out_free;
	size_t on_d = 0;
	r = 0;
	for (size_t i = 0; i < GPAGES && !r; i++) {
		unsigned st = pte_state(v[i]);
		if (st == UHMM_STATE_DEVICE_COHERENT && devmem_of(pte_dpage(v[i]))->dev == d)
			on_d++;
		else if (st != UHMM_STATE_SYSTEM && st != UHMM_STATE_NONE)
			r = -EBUSY; /* on another device, or poisoned */
	}
	if (on_d == GPAGES) {
		r = 1;
		goto out;
	}
	if (r || on_d)
		goto out_busy;
	int prot = granule_prot(g);
	if (prot < 0 || (atomic_load(&d->fail) & (UHMM_DUMMY_FAIL_COPY | UHMM_DUMMY_LOST)))
		goto out_busy;
	if (devmem_alloc_contig(d, GPAGES, dp) != GPAGES)
		goto out_busy;
	struct uhmm_devmem *m = devmem_of(dp[0]);
	size_t slot = dpage_index(m, dp[0]);
	char *dst = m->host + slot * PAGE_SIZE;

	mirror_invalidate(h, g, g + UHMM_COHERENT_GRANULE, UHMM_EVENT_MIGRATE, NULL);
	uffd_wp(h->uffd, g, UHMM_COHERENT_GRANULE, true);
	/* A page discarded meanwhile (not present) reads as what it is: zeros. */
	for (size_t off = 0; off < UHMM_COHERENT_GRANULE;) {
		ssize_t got = procmem_read(dst + off, g + off, UHMM_COHERENT_GRANULE - off);
		if (got > 0) {
			off += (size_t)got;
			continue;
		}
		memset(dst + off, 0, PAGE_SIZE);
		off += PAGE_SIZE;
	}
	self_change_begin(h, g, UHMM_COHERENT_GRANULE, true);
	void *p = mmap((void *)g, UHMM_COHERENT_GRANULE, prot, MAP_SHARED | MAP_FIXED, m->fd,
	               (off_t)(slot * PAGE_SIZE));
	self_change_end(h);
	if (p == MAP_FAILED) {
		/* The kernel may have unmapped the granule: put the data back. */
		void *q = mmap((void *)g, UHMM_COHERENT_GRANULE, PROT_READ | PROT_WRITE,
		               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (q != MAP_FAILED) {
			memcpy(q, dst, UHMM_COHERENT_GRANULE);
			mprotect(q, UHMM_COHERENT_GRANULE, prot);
			uffd_register(h->uffd, g, UHMM_COHERENT_GRANULE, h->use_wp, NULL);
		}
		for (size_t i = 0; i < GPAGES; i++) {
			dpage_put(dp[i]);
			if (pte_state(v[i]) == UHMM_STATE_NONE)
				v[i] = UHMM_STATE_SYSTEM;
		}
		r = -ENOMEM;
		goto out;
	}
	/* Write-protect on shmem is how the granule comes home safely. */
	uffd_register_wp_only(h->uffd, g, UHMM_COHERENT_GRANULE);
	for (size_t i = 0; i < GPAGES; i++) {
		dpage_set_vaddr(dp[i], g + i * PAGE_SIZE);
		v[i] = pte_make(UHMM_STATE_DEVICE_COHERENT, dp[i], 0);
	}
	stat_add(h, ST_TO_DEVICE, GPAGES);
	stat_add(h, ST_COPY_CALLS, 1);
	r = 0;
	goto out;
out_busy:
	r = -EBUSY;
out:
	unlock_granule(h, g, e, v);
out_free:
	free(e);
	free(v);
	free(dp);
	return r;
}

/* Bring granule g home; 0 if it was or now is in system memory. */
int coherent_home(struct uhmm *h, uintptr_t g)
{
	_Atomic uint64_t **e = malloc(GPAGES * sizeof(*e));
	uint64_t *v = malloc(GPAGES * sizeof(*v));
	int r = -ENOMEM;
	if (!e || !v || lock_granule(h, g, e, v))
		goto out_free;
	r = 0;
	if (pte_state(v[0]) != UHMM_STATE_DEVICE_COHERENT)
		goto out;
	struct uhmm_dpage *dp0 = pte_dpage(v[0]);
	struct uhmm_devmem *m = devmem_of(dp0);
	r = -EBUSY;
	for (size_t i = 0; i < GPAGES; i++)
		if (pte_state(v[i]) != UHMM_STATE_DEVICE_COHERENT || pte_dpage(v[i]) != dp0 + i)
			goto out;
	int prot = granule_prot(g);
	if (prot < 0 || (atomic_load(&m->dev->fail) & UHMM_DUMMY_FAIL_COPY))
		goto out;
	char *src = m->host + dpage_index(m, dp0) * PAGE_SIZE;
	mirror_invalidate(h, g, g + UHMM_COHERENT_GRANULE, UHMM_EVENT_MIGRATE, NULL);
	if (uffd_wp(h->uffd, g, UHMM_COHERENT_GRANULE, true))
		goto out;
	char *stage = mmap(NULL, UHMM_COHERENT_GRANULE, PROT_READ | PROT_WRITE,
	                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (stage == MAP_FAILED) {
		uffd_wp(h->uffd, g, UHMM_COHERENT_GRANULE, false);
		r = -ENOMEM;
		goto out;
	}
	memcpy(stage, src, UHMM_COHERENT_GRANULE);
	if (prot != (PROT_READ | PROT_WRITE))
		mprotect(stage, UHMM_COHERENT_GRANULE, prot);
	self_change_begin(h, g, UHMM_COHERENT_GRANULE, true);
	void *p = mremap(stage, UHMM_COHERENT_GRANULE, UHMM_COHERENT_GRANULE,
	                 MREMAP_MAYMOVE | MREMAP_FIXED, (void *)g);
	self_change_end(h);
	if (p == MAP_FAILED) {
		munmap(stage, UHMM_COHERENT_GRANULE);
		uffd_wp(h->uffd, g, UHMM_COHERENT_GRANULE, false);
		r = -ENOMEM;
		goto out;
	}
	uffd_register(h->uffd, g, UHMM_COHERENT_GRANULE, h->use_wp, NULL);
	for (size_t i = 0; i < GPAGES; i++) {
		dpage_put(dp0 + i);
		v[i] = UHMM_STATE_SYSTEM;
	}
	stat_add(h, ST_TO_SYSTEM, GPAGES);
	stat_add(h, ST_COPY_CALLS, 1);
	r = 0;
out:
	unlock_granule(h, g, e, v);
out_free:
	free(e);
	free(v);
	return r;
}
