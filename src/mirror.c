/* SPDX-License-Identifier: MIT */
/*
 * Mirroring: a device's view of the address space.
 *
 * Invalidation bumps the mirror's sequence *before* calling the device, and
 * runs before the CPU-side change becomes visible (with the pages locked),
 * so a device that snapshotted entries, then took its own lock and found
 * the sequence unchanged, programs entries that are still right.
 *
 * uhmm_range_fault is the device page fault: it reports (and with READ or
 * WRITE, makes) the state the device needs, in batches: one kernel call
 * per run of never-populated pages, one migration per run of pages held by
 * another device.
 */
#include "internal.h"
#include "probes.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

UHMM_API int uhmm_mirror_register(struct uhmm_device *d, const struct uhmm_mirror_ops *ops,
                                  void *priv, struct uhmm_mirror **out)
{
	if (!d || !ops || !out)
		return -EINVAL;
	struct uhmm_mirror *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->dev = d;
	m->ops = *ops;
	m->priv = priv;
	struct uhmm_mirror *expected = NULL;
	if (!atomic_compare_exchange_strong(&d->mirror, &expected, m)) {
		free(m);
		return -EEXIST;
	}
	*out = m;
	return 0;
}

UHMM_API int uhmm_mirror_unregister(struct uhmm_mirror *m)
{
	if (!m)
		return -EINVAL;
	struct uhmm_mirror *expected = m;
	if (!atomic_compare_exchange_strong(&m->dev->mirror, &expected, NULL))
		return -ENOENT;
	ebr_synchronize(); /* no invalidation still uses it */
	free(m);
	return 0;
}

UHMM_API void *uhmm_mirror_priv(const struct uhmm_mirror *m) { return m ? m->priv : NULL; }

UHMM_API uint64_t uhmm_mirror_read_begin(struct uhmm_mirror *m)
{
	return m ? atomic_load_explicit(&m->seq, memory_order_acquire) : 0;
}

UHMM_API int uhmm_mirror_read_retry(struct uhmm_mirror *m, uint64_t seq)
{
	return !m || atomic_load_explicit(&m->seq, memory_order_acquire) != seq;
}

void mirror_invalidate(struct uhmm *h, uintptr_t start, uintptr_t end, enum uhmm_event ev,
                       const struct uhmm_device *skip)
{
	unsigned tok = ebr_enter();
	for (int i = 0; i < MAX_DEVICES; i++) {
		struct uhmm_device *d = atomic_load(&h->devices[i]);
		if (!d || d == skip)
			continue;
		struct uhmm_mirror *m = atomic_load(&d->mirror);
		if (!m)
			continue;
		atomic_fetch_add_explicit(&m->seq, 1, memory_order_acq_rel);
		UHMM_PROBE(invalidation, start, end, (int)ev, d->name);
		if (m->ops.invalidate)
			m->ops.invalidate(m, start, end, ev);
		stat_add(h, ST_INVALIDATIONS, 1);
	}
	ebr_exit(tok);
}

/* ---- the device page fault ---- */

struct rf {
	struct uhmm_mirror *m;
	struct uhmm *h;
	unsigned flags;
	bool did;
};

static unsigned prot_bits(int prot)
{
	return (prot & PROT_WRITE) ? UHMM_ENTRY_WRITE : 0;
}

/* ---- unmanaged memory: each page's own state ---- */

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Pagemap entries of a run of pages, read up to 64 at a time. */
struct pm_cache {
	uintptr_t base;
	size_t n;
	uint64_t ent[64];
};

static int pm_get(struct pm_cache *c, uintptr_t a, uintptr_t end, uint64_t *out)
{
	if (!c->n || a < c->base || a >= c->base + c->n * PAGE_SIZE) {
		size_t n = MIN((end - a) / PAGE_SIZE, (size_t)64);
		c->n = 0;
		if (pagemap_read(a, n, c->ent))
			return -EIO;
		c->base = a;
		c->n = n;
	}
	*out = c->ent[(a - c->base) / PAGE_SIZE];
	return 0;
}

/*
 * May a device write this page of a private writable mapping in place?
 * The kernel's hmm_range_fault reports the page table entry's own write
 * bit, and in a private mapping that bit is off until a write fault has
 * made the page this process's own: a file page not yet copied on write
 * (a device writing it would write the page cache, the file), the zero
 * page, a page still shared with a forked child or merged by KSM.  An
 * absent page of a file mapping would be read from the file; an absent
 * anonymous page gets a fresh page of its own on the first write.
 */
static bool private_page_writable(const struct vma_info *v, uint64_t pm)
{
	if (!(pm & PM_PRESENT))
		return v->anon;
	return !(pm & PM_FILE) && (pm & PM_EXCLUSIVE);
}

/*
 * The WRITE bit of an unmanaged page in a writable mapping (*wr on
 * entry: from the mapping).  Asked to fault for write, make the page
 * writable as the CPU's write fault would, copy-on-write included:
 * MADV_POPULATE_WRITE (Linux 5.14) faults it in for write without storing
 * anything, where writing a byte back through /proc/self/mem could undo a
 * store another thread made in between.  Fails -EFAULT if that fault
 * fails (past the end of a file, say; or an older kernel).
 */
static int unmanaged_write(struct prot_cache *pc, struct pm_cache *pm, uintptr_t a,
                           uintptr_t end, bool fault_write, unsigned *wr)
{
	const struct vma_info *v = vma_at(pc, a);
	uint64_t e;
	if (!v || v->shared || pm_get(pm, a, end, &e) || private_page_writable(v, e))
		return 0; /* shared: writes reach the object, as the CPU's do */
	if (!fault_write) {
		*wr = 0;
		return 0;
	}
	int r;
	do
		r = madvise((void *)a, PAGE_SIZE, MADV_POPULATE_WRITE);
	while (r && (errno == EINTR || errno == EAGAIN));
	pm->n = 0; /* the page's state changed */
	return r ? -EFAULT : 0;
}

/* Populate a run of never-populated pages [a, a + n pages). */
static int fault_none_run(struct rf *f, uintptr_t a, size_t n, size_t *done)
{
	struct uhmm *h = f->h;
	_Atomic uint64_t *ents[BATCH_PAGES];
	size_t k = 0;
	for (; k < n; k++) {
		ents[k] = ptable_entry(&h->pt, a + k * PAGE_SIZE, true);
		if (!ents[k])
			break;
		/* Never wait for a page while holding others (migrate.c,
		 * migrate_window): the run ends at a busy page. */
		uint64_t v;
		if (!k)
			v = pte_lock(ents[k]);
		else if (!pte_trylock(ents[k], &v))
			break;
		if (v != 0) {
			page_unlock(h, ents[k], v);
			break;
		}
	}
	bool entered = gate_enter(h);
	/* An event may have changed the memory before the gate closed. */
	for (size_t i = 0; i < k; i++) {
		if (atomic_load(ents[i]) & PTE_MARKS) {
			for (size_t j = i; j < k; j++)
				page_unlock(h, ents[j], 0);
			k = i;
			break;
		}
	}
	*done = k;
	if (!k) {
		gate_exit(h, entered);
		return 0; /* state changed under us: the caller looks again */
	}
	bool write = f->flags & UHMM_RANGE_WRITE;
	size_t mapped;
	int r = populate_zero(h, a, k, write, &mapped);
	gate_exit(h, entered);
	uint64_t nv = UHMM_STATE_SYSTEM | (write ? 0 : PTE_ZERO);
	for (size_t i = 0; i < k; i++)
		page_unlock(h, ents[i], i < mapped ? nv : 0);
	wake_range(h, a, k * PAGE_SIZE);
	f->did = true;
	/* EAGAIN: the mm is changing; once its event is handled the caller,
	 * looking at these pages again, finds what became of them. */
	return r && r != -EAGAIN ? -EFAULT : 0;
}

/* Bring a page held by another device home (one page; runs are rare). */
static int fault_remote(struct rf *f, uintptr_t a)
{
	struct uhmm *h = f->h;
	_Atomic uint64_t *e = ptable_entry(&h->pt, a, false);
	if (!e)
		return 0;
	uint64_t v = pte_lock(e);
	if (pte_state(v) != UHMM_STATE_DEVICE || devmem_of(pte_dpage(v))->dev == f->m->dev) {
		page_unlock(h, e, v);
		return 0;
	}
	struct mpage p = { .addr = a, .e = e, .old = v };
	bool entered = gate_enter(h);
	if (!mpages_recheck(h, &p, 1, NULL)) {
		gate_exit(h, entered);
		return 0; /* an event changed it: the caller looks again */
	}
	migrate_to_system(h, &p, 1, f->m->dev);
	gate_exit(h, entered);
	mpage_unlock(h, &p);
	wake_range(h, a, PAGE_SIZE);
	f->did = true;
	return p.err && p.err != -EAGAIN ? -EFAULT : 0;
}

UHMM_API int uhmm_range_fault(struct uhmm_mirror *m, const void *addr, size_t npages, unsigned flags,
                              struct uhmm_range_entry *entries)
{
	uintptr_t a = (uintptr_t)addr;
	if (!m || !entries || !addr || !npages || !aligned(a) ||
	    (flags & ~(UHMM_RANGE_READ | UHMM_RANGE_WRITE)) || npages > (UINTPTR_MAX - a) / PAGE_SIZE)
		return -EINVAL;
	if (flags & UHMM_RANGE_WRITE)
		flags |= UHMM_RANGE_READ;
	struct rf f = { .m = m, .h = m->dev->h, .flags = flags };
	struct uhmm *h = f.h;
	service_quiesce(h);
	bool fault = flags != UHMM_RANGE_SNAPSHOT;
	struct prot_cache pc;
	prot_cache_init(&pc, a, a + npages * PAGE_SIZE);
	struct pm_cache pm = { .n = 0 };
	int rc = 0;

	for (size_t i = 0; i < npages;) {
		uintptr_t pa = a + i * PAGE_SIZE;
		struct uhmm_range_entry *ent = &entries[i];
		memset(ent, 0, sizeof(*ent));
		int prot = prot_at(&pc, pa);
		if (prot < 0 || !(prot & PROT_READ)) {
			ent->flags = UHMM_ENTRY_ERROR;
			if (fault) {
				rc = -EFAULT;
				break;
			}
			i++;
			continue;
		}
		if ((flags & UHMM_RANGE_WRITE) && !(prot & PROT_WRITE)) {
			rc = -EPERM;
			break;
		}
		unsigned wr = prot_bits(prot);
		struct range_ent r;
		unsigned tok = ebr_enter();
		bool known = range_lookup(pa, &r);
		ebr_exit(tok);
		bool managed = known && r.h == h && !r.pool && !r.persist;
		if (!managed) {
			/* Unmanaged memory: the device goes through the process's
			 * own page tables; nothing to mirror.  Memory of uhmm's
			 * own (another context's ranges, pools, persistent
			 * mappings) is reported from the mapping: faulting it here
			 * would be that context's business. */
			if (wr && !known) {
				rc = unmanaged_write(&pc, &pm, pa, a + npages * PAGE_SIZE,
				                     flags & UHMM_RANGE_WRITE, &wr);
				if (rc)
					break;
			}
			ent->flags = UHMM_ENTRY_VALID | wr;
			i++;
			continue;
		}
		_Atomic uint64_t *e = ptable_entry(&h->pt, pa, false);
		uint64_t v = e ? atomic_load(e) : 0;
		if (fault && (v & PTE_BUSY)) {
			/* Being migrated: its old state is about to be wrong, and
			 * the invalidation may already be behind our sequence.
			 * Wait for the migration, like a CPU fault would. */
			page_unlock(h, e, pte_lock(e));
			continue;
		}
		switch (pte_state(v)) {
		case UHMM_STATE_NONE: {
			if (!fault) {
				ent->flags = UHMM_ENTRY_NONE;
				i++;
				break;
			}
			size_t n = 1;
			while (i + n < npages && n < BATCH_PAGES && pa + n * PAGE_SIZE < r.end &&
			       prot_at(&pc, pa + n * PAGE_SIZE) == prot) {
				_Atomic uint64_t *ne = ptable_entry(&h->pt, pa + n * PAGE_SIZE, false);
				if (ne && atomic_load(ne) != 0)
					break;
				n++;
			}
			size_t done;
			rc = fault_none_run(&f, pa, n, &done);
			if (rc)
				goto out;
			/* Entries are filled when the loop looks at these pages again. */
			break;
		}
		case UHMM_STATE_SYSTEM:
			ent->flags = UHMM_ENTRY_VALID | wr;
			if (v & PTE_ZERO) {
				if (flags & UHMM_RANGE_WRITE) {
					/* The device will write: no longer the zero page. */
					atomic_fetch_and(e, ~PTE_ZERO);
				} else if (page_is_zero(pa) == 1) {
					/* Like the CPU's zero-page PTE: read-only, so a
					 * device write faults (and sees the protection). */
					ent->flags = UHMM_ENTRY_VALID | UHMM_ENTRY_ZERO;
				} else {
					atomic_fetch_and(e, ~PTE_ZERO); /* written since: stale hint */
				}
			}
			i++;
			break;
		case UHMM_STATE_DEVICE: {
			struct uhmm_dpage *dp = pte_dpage(v);
			struct uhmm_devmem *mem = devmem_of(dp);
			if (mem && mem->dev == m->dev) {
				ent->flags = UHMM_ENTRY_DEVICE_LOCAL | wr;
				ent->mem = mem;
				ent->index = dpage_index(mem, dp);
				i++;
			} else if (!fault) {
				ent->flags = UHMM_ENTRY_DEVICE_REMOTE | wr;
				i++;
			} else {
				rc = fault_remote(&f, pa);
				if (rc)
					goto out;
			}
			break;
		}
		case UHMM_STATE_DEVICE_COHERENT: {
			/* Addressable: every device may use it in place. */
			struct uhmm_dpage *dp = pte_dpage(v);
			struct uhmm_devmem *mem = devmem_of(dp);
			if (mem && mem->dev == m->dev) {
				ent->flags = UHMM_ENTRY_DEVICE_LOCAL | UHMM_ENTRY_COHERENT | wr;
				ent->mem = mem;
				ent->index = dpage_index(mem, dp);
			} else {
				ent->flags = (fault ? UHMM_ENTRY_VALID : UHMM_ENTRY_DEVICE_REMOTE) |
				             UHMM_ENTRY_COHERENT | wr;
			}
			i++;
			break;
		}
		default: /* POISONED */
			ent->flags = UHMM_ENTRY_ERROR;
			if (fault) {
				rc = -EFAULT;
				goto out;
			}
			i++;
			break;
		}
	}
out:
	if (fault)
		stat_add(h, ST_DEVICE_FAULTS, 1);
	UHMM_PROBE(device_fault, addr, npages, flags, m->dev->name, rc);
	return rc;
}
