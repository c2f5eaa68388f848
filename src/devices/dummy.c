/* SPDX-License-Identifier: MIT */
/*
 * The dummy device: a simulated device living in the process, modelled on
 * the kernel's HMM test driver.
 *
 * Its memory is host memory that application pointers never point into
 * (HOST_BACKED pools), and it has its own page table keyed by virtual page
 * number.  Device operations translate through that table; a missing or
 * insufficient entry is a device page fault, served by uhmm_range_fault
 * with the mirror retry protocol.  Invalidations clear entries.
 *
 * Accesses: a page in this device's memory is read/written in its pool
 * slot; a page in system memory is read/written through /proc/self/mem,
 * which fails (instead of faulting) if the page went away meanwhile — the
 * entry is then dropped and the page faulted again.  Memory outside
 * managed ranges is accessed through the process's page tables
 * (process_vm_readv/writev) and never cached.
 *
 * Copy mode (UHMM_DUMMY_COPY_DEVICE): the device is not HOST_BACKED; its
 * memory is a block's `sim` mapping, which only its copy callbacks below
 * and its own accesses touch, so uhmm moves data the way it does for a
 * real device (the move-staging area, or the copy fallback).
 *
 * Lock: d->lock guards the table and is held across accesses (which never
 * fault), never while waiting for uhmm.
 */
#include "../internal.h"

#include <sched.h>

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

/* Device page table entry bits (dpage pointer above, as in the core). */
#define DPTE_VALID   (1ULL << 0)
#define DPTE_WRITE   (1ULL << 1)
#define DPTE_LOCAL   (1ULL << 2)
#define DPTE_UNMANAGED (1ULL << 3)
#define DPTE_EXCLUSIVE (1ULL << 4) /* atomic access granted; any invalidation revokes it */
#define DPTE_GEN_SHIFT 11          /* system entries: when installed (bits 11-63) */

struct dummy {
	struct uhmm_device *dev;
	struct uhmm_mirror *mirror;
	pthread_mutex_t lock;
	struct ptable pt;
	_Atomic uint64_t cpages, faults;
	_Atomic uint64_t gen; /* generation of system entries (see dummy_access) */
	pthread_mutex_t excl_lock; /* creation of excl_mem (never held with dm->lock) */
	struct uhmm_devmem *excl_mem; /* coherent device: private block for exclusive pages */
};

static struct dummy *dummy_of(struct uhmm_device *d)
{
	return d && d->backend_destroy ? d->backend : NULL;
}

/* ---- invalidation ---- */

static int zap_one(uintptr_t addr, _Atomic uint64_t *e, void *arg)
{
	(void)addr;
	(void)arg;
	atomic_store_explicit(e, 0, memory_order_relaxed);
	return 0;
}

static void dummy_invalidate(struct uhmm_mirror *m, uintptr_t start, uintptr_t end,
                             enum uhmm_event ev)
{
	(void)ev;
	struct dummy *dm = uhmm_mirror_priv(m);
	pthread_mutex_lock(&dm->lock);
	ptable_walk(&dm->pt, start, end, zap_one, NULL);
	pthread_mutex_unlock(&dm->lock);
}

/* ---- device page faults ---- */

#define CHUNK 512

/* Fault [a, a + n pages) into the device table.  Returns with dm->lock
 * held on success, not held on failure. */
static int dummy_fault(struct dummy *dm, uintptr_t a, size_t n, bool write)
{
	struct uhmm_range_entry ent[CHUNK];
	unsigned flags = write ? UHMM_RANGE_WRITE : UHMM_RANGE_READ;
	for (size_t done = 0; done < n;) {
		size_t k = MIN(n - done, (size_t)CHUNK);
		uintptr_t ca = a + done * PAGE_SIZE;
		for (;;) {
			uint64_t seq = uhmm_mirror_read_begin(dm->mirror);
			int r = uhmm_range_fault(dm->mirror, (void *)ca, k, flags, ent);
			if (r)
				return r;
			pthread_mutex_lock(&dm->lock);
			if (uhmm_mirror_read_retry(dm->mirror, seq)) {
				pthread_mutex_unlock(&dm->lock);
				continue;
			}
			break;
		}
		uint64_t gen = atomic_fetch_add(&dm->gen, 1) + 1;
		for (size_t i = 0; i < k; i++) {
			_Atomic uint64_t *e = ptable_entry(&dm->pt, ca + i * PAGE_SIZE, true);
			if (!e) {
				pthread_mutex_unlock(&dm->lock);
				return -ENOMEM;
			}
			uint64_t v = 0;
			unsigned f = ent[i].flags;
			if (f & UHMM_ENTRY_DEVICE_LOCAL) {
				struct uhmm_dpage *dp = &ent[i].mem->pages[ent[i].index];
				v = pte_make(0, dp, DPTE_VALID | DPTE_LOCAL);
			} else if (f & UHMM_ENTRY_VALID) {
				v = DPTE_VALID | (gen << DPTE_GEN_SHIFT);
				struct range_ent r;
				unsigned tok = ebr_enter();
				if (!range_lookup_managed(dm->dev->h, ca + i * PAGE_SIZE, &r))
					v |= DPTE_UNMANAGED;
				ebr_exit(tok);
			}
			if (v && (f & UHMM_ENTRY_WRITE))
				v |= DPTE_WRITE;
			atomic_store(e, v);
		}
		done += k;
		if (done < n)
			pthread_mutex_unlock(&dm->lock);
	}
	return 0;
}

/* Copy a local page (in this device's pool) under dm->lock: an
 * invalidation (the page leaving) waits for the lock. */
/* Where page idx of block m keeps its data. */
static char *local_mem(struct uhmm_devmem *m, size_t idx)
{
	return m->host ? m->host + idx * PAGE_SIZE : m->sim + idx * PAGE_SIZE;
}

static void access_local(uint64_t v, char *buf, bool write)
{
	struct uhmm_dpage *dp = pte_dpage(v);
	struct uhmm_devmem *m = devmem_of(dp);
	char *slot = local_mem(m, dpage_index(m, dp));
	if (write)
		memcpy(slot, buf, PAGE_SIZE);
	else
		memcpy(buf, slot, PAGE_SIZE);
}

/*
 * Copy a run of pages in system memory through the process's page tables,
 * without dm->lock: like a CPU access, it may fault (served by uhmm as
 * usual), so it must not hold a lock an invalidation needs.  It is always
 * coherent: it reads or writes whatever the address holds at that instant,
 * and the kernel enforces the mapping's protection.  Returns bytes done.
 */
static size_t access_system(uintptr_t va, char *buf, size_t len, bool write)
{
	size_t done = 0;
	while (done < len) {
		struct iovec l = { buf + done, len - done }, r = { (void *)(va + done), len - done };
		ssize_t n = write ? process_vm_writev(getpid(), &l, 1, &r, 1, 0)
		                  : process_vm_readv(getpid(), &l, 1, &r, 1, 0);
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	return done & ~PAGE_MASK;
}

/* Local pages need the caller's current protection checked by hand (the
 * pool is uhmm's mapping); system pages get it from the kernel. */
static int check_prot(struct prot_cache *pc, bool *have, uintptr_t a, size_t npages, bool write)
{
	if (!*have) {
		prot_cache_init(pc, a, a + npages * PAGE_SIZE);
		*have = true;
	}
	for (size_t i = 0; i < npages; i++) {
		int prot = prot_at(pc, a + i * PAGE_SIZE);
		if (prot < 0 || !(prot & PROT_READ))
			return -EFAULT;
		if (write && !(prot & PROT_WRITE))
			return -EPERM;
	}
	return 0;
}

static void make_present(struct uhmm *h, uintptr_t va, bool write)
{
	struct range_ent r;
	unsigned tok = ebr_enter();
	if (range_lookup_managed(h, va, &r))
		for (int t = 0; t < 1000; t++) {
			int rc = fault_resolve(h, &r, va, write ? FAULT_WRITE : 0, 0);
			if (rc != -EAGAIN)
				break;
			sched_yield();
		}
	ebr_exit(tok);
}

static int dummy_access(struct uhmm_device *d, uintptr_t a, char *buf, size_t npages, bool write,
                        struct uhmm_dummy_counters *c)
{
	struct dummy *dm = dummy_of(d);
	if (!dm || !buf || check_span((void *)a, npages * PAGE_SIZE) ||
	    npages > SIZE_MAX / PAGE_SIZE)
		return -EINVAL;
	if (atomic_load(&d->fail) & UHMM_DUMMY_LOST)
		return -ENODEV;
	service_quiesce(d->h);
	uint64_t faults = 0, copied = 0;
	int rc = 0;
	unsigned stale = 0;
	uintptr_t last_fail = 0;
	struct prot_cache pc;
	bool have_pc = false, checked_local = false;
	uint64_t need = DPTE_VALID | (write ? DPTE_WRITE : 0);
	pthread_mutex_lock(&dm->lock);
	for (size_t i = 0; i < npages;) {
		uintptr_t va = a + i * PAGE_SIZE;
		_Atomic uint64_t *e = ptable_entry(&dm->pt, va, false);
		uint64_t v = e ? atomic_load(e) : 0;
		if ((v & need) != need) {
			pthread_mutex_unlock(&dm->lock);
			faults++;
			rc = dummy_fault(dm, va, npages - i, write);
			if (rc)
				goto out_unlocked;
			continue;
		}
		if (v & DPTE_LOCAL) {
			if (!checked_local) {
				/* mprotect is not reported by userfaultfd. */
				pthread_mutex_unlock(&dm->lock);
				rc = check_prot(&pc, &have_pc, a, npages, write);
				if (rc)
					goto out_unlocked;
				checked_local = true;
				pthread_mutex_lock(&dm->lock);
				continue; /* the table may have changed meanwhile */
			}
			access_local(v, buf + i * PAGE_SIZE, write);
			PTRACE(DEV_ACCESS, 0, va, PAGE_SIZE, (uintptr_t)pte_dpage(v), write | 2);
			copied++;
			i++;
			continue;
		}
		/* A run of mapped system (or unmanaged) pages: one call. */
		uint64_t seen[CHUNK];
		size_t j = i + 1;
		seen[0] = v;
		while (j < npages && j - i < CHUNK) {
			_Atomic uint64_t *ne = ptable_entry(&dm->pt, a + j * PAGE_SIZE, false);
			uint64_t nv = ne ? atomic_load(ne) : 0;
			if ((nv & need) != need || (nv & DPTE_LOCAL))
				break;
			seen[j - i] = nv;
			j++;
		}
		pthread_mutex_unlock(&dm->lock);
		size_t done = access_system(va, buf + i * PAGE_SIZE, (j - i) * PAGE_SIZE, write);
		PTRACE(DEV_ACCESS, 0, va, (j - i) * PAGE_SIZE, done, write);
		pthread_mutex_lock(&dm->lock);
		/* Like DMA through the CPU's page tables: a migration that
		 * invalidated these pages meanwhile may have copied a page
		 * before our access reached it (a pinned page is copied, not
		 * moved).  Pages whose entries it zapped (even if another
		 * fault installed them again: the generation tells) are done
		 * again. */
		size_t ok = done / PAGE_SIZE;
		bool zapped = false;
		for (size_t t = 0; t < ok && !zapped; t++) {
			_Atomic uint64_t *te = ptable_entry(&dm->pt, va + t * PAGE_SIZE, false);
			uint64_t tv = te ? atomic_load(te) : 0;
			if (tv != seen[t]) {
				ok = t;
				zapped = true;
			}
		}
		copied += ok;
		i += ok;
		if (zapped)
			continue; /* its entry is gone: fault it again */
		if (i < j) {
			/* The page went away or lost access meanwhile: fault it
			 * again.  Unmanaged memory (past the end of a file, say)
			 * has nothing uhmm could bring back: that is final. */
			_Atomic uint64_t *fe = ptable_entry(&dm->pt, a + i * PAGE_SIZE, false);
			uint64_t fv = fe ? atomic_load(fe) : 0;
			if (fe)
				atomic_store(fe, 0);
			uintptr_t fva = a + i * PAGE_SIZE;
			if (((fv & DPTE_UNMANAGED) && fva == last_fail) || ++stale > 1000) {
				rc = -EFAULT;
				break;
			}
			last_fail = fva; /* a second failure in a row of unmanaged memory is final */
			/* A managed page the table calls present can be missing:
			 * madvise zaps after its event was handled (and in SIGBUS
			 * mode the kernel's own access does not fault it in).
			 * Resolve it as a CPU fault would, out of our lock. */
			pthread_mutex_unlock(&dm->lock);
			PTRACE(MAKE_PRESENT, 0, fva, PAGE_SIZE, fv, write);
			make_present(d->h, fva, write);
			pthread_mutex_lock(&dm->lock);
		}
	}
	pthread_mutex_unlock(&dm->lock);
out_unlocked:
	atomic_fetch_add(&dm->faults, faults);
	atomic_fetch_add(&dm->cpages, copied);
	if (c) {
		c->faults += faults;
		c->cpages += copied;
	}
	return rc;
}

UHMM_API int uhmm_dummy_read(struct uhmm_device *d, const void *addr, void *buf, size_t npages,
                             struct uhmm_dummy_counters *c)
{
	return dummy_access(d, (uintptr_t)addr, buf, npages, false, c);
}

UHMM_API int uhmm_dummy_write(struct uhmm_device *d, void *addr, const void *buf, size_t npages,
                              struct uhmm_dummy_counters *c)
{
	return dummy_access(d, (uintptr_t)addr, (char *)buf, npages, true, c);
}

UHMM_API int uhmm_dummy_snapshot(struct uhmm_device *d, const void *addr, size_t npages,
                                 uint8_t *out)
{
	struct dummy *dm = dummy_of(d);
	if (!dm || !out || check_span(addr, npages * PAGE_SIZE) || npages > SIZE_MAX / PAGE_SIZE)
		return -EINVAL;
	struct uhmm_range_entry ent[CHUNK];
	for (size_t done = 0; done < npages;) {
		size_t k = MIN(npages - done, (size_t)CHUNK);
		int r = uhmm_range_fault(dm->mirror, (const char *)addr + done * PAGE_SIZE, k,
		                         UHMM_RANGE_SNAPSHOT, ent);
		if (r)
			return r;
		for (size_t i = 0; i < k; i++) {
			unsigned f = ent[i].flags;
			uint8_t rw = (f & UHMM_ENTRY_WRITE) ? UHMM_SNAP_WRITE : UHMM_SNAP_READ;
			uint8_t s;
			if (f & UHMM_ENTRY_ERROR)
				s = UHMM_SNAP_ERROR;
			else if (f & UHMM_ENTRY_NONE)
				s = UHMM_SNAP_NONE;
			else if (f & UHMM_ENTRY_DEVICE_LOCAL)
				s = ((f & UHMM_ENTRY_COHERENT) ? UHMM_SNAP_DEV_COHERENT_LOCAL
				                               : UHMM_SNAP_DEV_PRIVATE_LOCAL) | rw;
			else if (f & UHMM_ENTRY_DEVICE_REMOTE)
				s = ((f & UHMM_ENTRY_COHERENT) ? UHMM_SNAP_DEV_COHERENT_REMOTE
				                               : UHMM_SNAP_DEV_PRIVATE_REMOTE) | rw;
			else if (f & UHMM_ENTRY_ZERO)
				s = UHMM_SNAP_ZERO | UHMM_SNAP_READ;
			else
				s = rw;
			out[done + i] = s;
		}
		done += k;
	}
	return 0;
}

UHMM_API int uhmm_dummy_release(struct uhmm_device *d)
{
	if (!dummy_of(d))
		return -EINVAL;
	service_quiesce(d->h);
	pthread_mutex_lock(&d->evac_lock); /* no block is freed under us */
	pthread_mutex_lock(&d->lock);
	struct uhmm_devmem *list = d->mems;
	pthread_mutex_unlock(&d->lock);
	int rc = 0;
	for (struct uhmm_devmem *m = list; m; m = m->next) {
		int r = devmem_evacuate(m);
		if (r && !rc)
			rc = r;
	}
	pthread_mutex_unlock(&d->evac_lock);
	return rc;
}

/*
 * Exclusive access is device-private residency with a mark: the CPU cannot
 * touch the page without faulting it back, and that migration invalidates
 * (revokes) the mark.
 *
 * On coherent memory the CPU reads and writes in place without a fault, so
 * a mark on a coherent page would outlive any CPU access.  Write-protect
 * would catch writes only; reads of a shmem mapping can only be made to
 * fault by zapping its PTEs under minor-fault registration, a third kind
 * of fault for both fault paths.  So a coherent device keeps a private
 * block for its exclusive pages: their granules come home and the pages
 * move into that block, where any CPU access, read or write, faults them
 * back exactly as on a private device.
 */
static int excl_private_block(struct dummy *dm)
{
	int r = 0;
	pthread_mutex_lock(&dm->excl_lock);
	if (!dm->excl_mem)
		r = uhmm_devmem_add(dm->dev, UHMM_DUMMY_CHUNK,
		                    UHMM_DEVMEM_DEVICE | UHMM_DEVMEM_ALLOW_MIGRATION |
		                            UHMM_DEVMEM_UNADDRESSABLE,
		                    &dm->excl_mem);
	pthread_mutex_unlock(&dm->excl_lock);
	return r;
}

UHMM_API int uhmm_dummy_exclusive(struct uhmm_device *d, void *addr, size_t npages)
{
	struct dummy *dm = dummy_of(d);
	uintptr_t a = (uintptr_t)addr;
	if (!dm || check_span(addr, npages * PAGE_SIZE) || npages > SIZE_MAX / PAGE_SIZE)
		return -EINVAL;
	bool coherent = d->coherent;
	if (coherent) {
		int r = excl_private_block(dm);
		if (r)
			return r == -ENOMEM ? -EBUSY : r;
	}
	/* Populate never-touched pages (writable, like the kernel's
	 * make_device_exclusive), then take them. */
	int r = dummy_fault(dm, a, npages, true);
	if (r)
		return r;
	pthread_mutex_unlock(&dm->lock);
	r = coherent ? migrate_private(d->h, addr, npages * PAGE_SIZE, d, NULL)
	             : uhmm_migrate(d->h, addr, npages * PAGE_SIZE, d, NULL);
	if (r)
		return r;
	r = dummy_fault(dm, a, npages, true);
	if (r)
		return r;
	for (size_t i = 0; i < npages; i++) {
		_Atomic uint64_t *e = ptable_entry(&dm->pt, a + i * PAGE_SIZE, false);
		uint64_t v = e ? atomic_load(e) : 0;
		if (!(v & DPTE_LOCAL)) {
			r = -EBUSY;
			continue;
		}
		atomic_store(e, v | DPTE_EXCLUSIVE);
	}
	pthread_mutex_unlock(&dm->lock);
	return r;
}

UHMM_API int uhmm_dummy_check_exclusive(struct uhmm_device *d, void *addr, size_t npages)
{
	struct dummy *dm = dummy_of(d);
	uintptr_t a = (uintptr_t)addr;
	if (!dm || check_span(addr, npages * PAGE_SIZE) || npages > SIZE_MAX / PAGE_SIZE)
		return -EINVAL;
	int r = 0;
	pthread_mutex_lock(&dm->lock);
	for (size_t i = 0; i < npages && !r; i++) {
		_Atomic uint64_t *e = ptable_entry(&dm->pt, a + i * PAGE_SIZE, false);
		if (e && (atomic_load(e) & DPTE_EXCLUSIVE))
			r = -EPERM;
	}
	pthread_mutex_unlock(&dm->lock);
	return r;
}

/* ---- copy mode: the backend callbacks of a device that is not HOST_BACKED ---- */

static int copy_pages(struct uhmm_device *d, struct uhmm_devmem *m, const size_t *idx, char *host,
                      size_t n, bool to)
{
	if (atomic_load(&d->fail) & UHMM_DUMMY_FAIL_COPY_LATE)
		return -EIO;
	for (size_t i = 0; i < n; i++) {
		if (idx[i] >= m->npages)
			return -EINVAL;
		if (to)
			memcpy(local_mem(m, idx[i]), host + i * PAGE_SIZE, PAGE_SIZE);
		else
			memcpy(host + i * PAGE_SIZE, local_mem(m, idx[i]), PAGE_SIZE);
	}
	return 0;
}

static int dummy_copy_to(struct uhmm_device *d, struct uhmm_devmem *m, const size_t *idx,
                         const void *src, size_t n)
{
	return copy_pages(d, m, idx, (char *)src, n, true);
}

static int dummy_copy_from(struct uhmm_device *d, void *dst, struct uhmm_devmem *m,
                           const size_t *idx, size_t n)
{
	return copy_pages(d, m, idx, dst, n, false);
}

/* A freed page keeps no memory (as a HOST_BACKED pool's slot does not). */
static void dummy_page_free(struct uhmm_device *d, struct uhmm_devmem *m, size_t idx)
{
	(void)d;
	madvise(local_mem(m, idx), PAGE_SIZE, MADV_DONTNEED);
}

UHMM_API int uhmm_dummy_set_fail(struct uhmm_device *d, unsigned flags)
{
	if (!dummy_of(d) || (flags & ~(UHMM_DUMMY_FAIL_ALLOC | UHMM_DUMMY_FAIL_COPY | UHMM_DUMMY_LOST |
	                               UHMM_DUMMY_FAIL_COPY_LATE)))
		return -EINVAL;
	unsigned old = atomic_exchange(&d->fail, flags);
	if ((flags & UHMM_DUMMY_LOST) && !(old & UHMM_DUMMY_LOST))
		return device_lose(d);
	return 0;
}

UHMM_API struct uhmm_devmem *uhmm_dummy_devmem(struct uhmm_device *d)
{
	if (!dummy_of(d))
		return NULL;
	pthread_mutex_lock(&d->lock);
	struct uhmm_devmem *m = d->mems;
	while (m && m->next)
		m = m->next; /* the list is newest first: the first block is last */
	pthread_mutex_unlock(&d->lock);
	return m;
}

UHMM_API int uhmm_dummy_counters_get(struct uhmm_device *d, struct uhmm_dummy_counters *c)
{
	struct dummy *dm = dummy_of(d);
	if (!dm || !c)
		return -EINVAL;
	c->cpages = atomic_load(&dm->cpages);
	c->faults = atomic_load(&dm->faults);
	return 0;
}

static void dummy_destroy(struct uhmm_device *d)
{
	struct dummy *dm = d->backend;
	ptable_destroy(&dm->pt);
	pthread_mutex_destroy(&dm->lock);
	pthread_mutex_destroy(&dm->excl_lock);
	free(dm);
}

UHMM_API int uhmm_dummy_create(struct uhmm *h, const struct uhmm_dummy_options *o,
                               struct uhmm_device **out)
{
	if (!h || !out)
		return -EINVAL;
	struct uhmm_dummy_options oc = { 0 };
	if (o) {
		/* Fields past the caller's sz stay 0: their defaults. */
		long n = sized_check(o, UHMM_DUMMY_V1, UHMM_DUMMY_KNOWN);
		if (n < 0)
			return (int)n;
		memcpy(&oc, o, (size_t)n);
		o = &oc;
	}
	size_t cap = o && o->capacity ? o->capacity : (1UL << 30);
	unsigned flags = o && o->devmem_flags ? o->devmem_flags
	                                      : UHMM_DEVMEM_DEVICE | UHMM_DEVMEM_ALLOW_MIGRATION |
	                                                UHMM_DEVMEM_UNADDRESSABLE;
	if (flags & ~(UHMM_DEVMEM_DEVICE | UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE))
		return -EINVAL;
	flags |= UHMM_DEVMEM_DEVICE;
	if ((flags & UHMM_DEVMEM_UNADDRESSABLE) && !(flags & UHMM_DEVMEM_ALLOW_MIGRATION))
		return -EINVAL;
	bool persistent = !(flags & UHMM_DEVMEM_ALLOW_MIGRATION);
	const char *path = o ? o->path : NULL;
	if (path && (flags & UHMM_DEVMEM_UNADDRESSABLE))
		return -EINVAL; /* private memory has no file */
	uint64_t dflags = o ? o->flags : 0;
	if (dflags & ~(uint64_t)UHMM_DUMMY_COPY_DEVICE)
		return -EINVAL;
	bool copy = dflags & UHMM_DUMMY_COPY_DEVICE;
	if (copy && (path || !(flags & UHMM_DEVMEM_UNADDRESSABLE)))
		return -EINVAL; /* a copy device's memory is private */
	if (persistent) {
		/* One block, all of it at once: it is what the application maps. */
		if (!o || !o->capacity)
			cap = UHMM_DUMMY_CHUNK;
		cap = (cap + PAGE_SIZE - 1) & ~PAGE_MASK;
	} else {
		cap = (cap + UHMM_DUMMY_CHUNK - 1) / UHMM_DUMMY_CHUNK * UHMM_DUMMY_CHUNK;
	}

	struct dummy *dm = calloc(1, sizeof(*dm));
	if (!dm)
		return -ENOMEM;
	pthread_mutex_init(&dm->lock, NULL);
	pthread_mutex_init(&dm->excl_lock, NULL);
	ptable_init(&dm->pt);
	static const struct uhmm_device_ops ops = { 0 };
	static const struct uhmm_device_ops copy_ops = {
		.copy_to_device = dummy_copy_to,
		.copy_from_device = dummy_copy_from,
		.page_free = dummy_page_free,
	};
	struct uhmm_device *d;
	int r = copy ? uhmm_device_create(h, "dummy-copy", &copy_ops, 0, NULL, &d)
	             : uhmm_device_create(h, "dummy", &ops, UHMM_DEVICE_HOST_BACKED, NULL, &d);
	if (r) {
		dummy_destroy(&(struct uhmm_device){ .backend = dm });
		return r;
	}
	dm->dev = d;
	d->sim_memory = copy; /* before its first block */
	/* Under d->lock: the device is published, and the status thread
	 * (status.c) reads these under it. */
	pthread_mutex_lock(&d->lock);
	d->capacity = cap;
	d->grow_chunk = persistent ? 0 : UHMM_DUMMY_CHUNK;
	d->grow_flags = flags;
	pthread_mutex_unlock(&d->lock);
	d->backend = dm;
	if (persistent || path) {
		struct uhmm_devmem *m;
		r = path ? uhmm_devmem_add_file(d, path, persistent ? cap : UHMM_DUMMY_CHUNK, flags, &m)
		         : uhmm_devmem_add(d, cap, flags, &m);
		if (r) {
			uhmm_device_destroy(d);
			dummy_destroy(&(struct uhmm_device){ .backend = dm });
			return r;
		}
	} else if (!(flags & UHMM_DEVMEM_UNADDRESSABLE)) {
		/* Coherent: make sure this kernel can do it before promising. */
		struct uhmm_devmem *m;
		r = uhmm_devmem_add(d, UHMM_DUMMY_CHUNK, flags, &m);
		if (r) {
			uhmm_device_destroy(d);
			dummy_destroy(&(struct uhmm_device){ .backend = dm });
			return r;
		}
	}
	static const struct uhmm_mirror_ops mops = { .invalidate = dummy_invalidate };
	r = uhmm_mirror_register(d, &mops, dm, &dm->mirror);
	if (r) {
		uhmm_device_destroy(d);
		dummy_destroy(&(struct uhmm_device){ .backend = dm });
		return r;
	}
	d->backend_destroy = dummy_destroy;
	*out = d;
	return 0;
}
