/* SPDX-License-Identifier: MIT */
/*
 * Device memory hotplug: blocks of device pages with a classification,
 * per-page descriptors with a reference count, and an allocator that hands
 * out contiguous runs (so one UFFDIO_MOVE can carry many pages).
 *
 * A block's descriptors are looked up from a page pointer through a global
 * table indexed by the block id packed in the descriptor (one word).
 *
 * HOST_BACKED blocks own a host "pool" mapping.  When the context can
 * move pages (UFFDIO_MOVE), the pool is registered with its userfaultfd
 * (a MOVE needs both sides registered with the same one) and a free slot
 * must be empty (not mapped) so a page can be moved into it.  A page that
 * leaves by MOVE leaves its slot empty ("clean"); one dropped with its data
 * still there (discarded, poisoned) is pushed on the block's dirty stack
 * and emptied by the next allocator, on an application thread, because
 * the madvise that empties it raises a REMOVE event that only the service
 * thread can read.  An unregistered pool (no MOVE) raises no event: its
 * slots are emptied as their pages leave, so a free slot holds no memory.
 *
 * Lifetimes (who owns what, and what keeps it alive):
 *  - A block belongs to its device's list (d->mems, under d->lock) and is
 *    freed only by devmem_destroy, from uhmm_devmem_remove or
 *    uhmm_device_destroy, after all three of:
 *    (a) it is marked dead under d->lock.  Allocators hold d->lock from
 *        choosing a block until the pages they took are counted in
 *        `used`, so afterwards every allocation from it is counted or will
 *        never happen.  A dying device (d->dying) does not grow either;
 *    (b) `used` is 0.  `used` counts descriptors that hold a reference
 *        *and* releases still running: release() lowers it as its very
 *        last access to the block or its device (page_free, the memory
 *        file's punch-hole, the dirty stack, the bitmap all come first);
 *    (c) ebr_synchronize(): lock-free readers that found a descriptor
 *        through a page entry (queries, invalidations) have left.
 *  - So the device, which is freed after its blocks, outlives every
 *    page_free, and a block's fd is closed after its last punch-hole.
 *  - A descriptor's reference is held by the page entry that names it (or
 *    by the migration that allocated it, until it publishes the entry).
 */
#include "internal.h"
#include "probes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sched.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>
#include <sys/mman.h>

#define MAX_MEMS 65536 /* 16 bits of block id in a descriptor */

static struct uhmm_devmem *_Atomic g_mems[MAX_MEMS];
static pthread_mutex_t g_mems_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t g_mems_hint;

struct uhmm_devmem *devmem_of(const struct uhmm_dpage *dp)
{
	uint64_t w = atomic_load_explicit(&((struct uhmm_dpage *)dp)->w, memory_order_acquire);
	return atomic_load_explicit(&g_mems[(w >> DP_ID_SHIFT) & 0xffff], memory_order_acquire);
}

void dpage_check_(struct uhmm *h, const struct uhmm_dpage *dp, uintptr_t va, const char *where)
{
	uint64_t w = atomic_load(&((struct uhmm_dpage *)dp)->w);
	unsigned id = (unsigned)(w >> DP_ID_SHIFT) & 0xffff;
	struct uhmm_devmem *m = atomic_load(&g_mems[id]);
	const char *why = NULL;
	if ((w & DP_REF_MASK) == 0 || (w & DP_REF_MASK) > 16)
		why = "bad reference count";
	else if (!m)
		why = "its block id names no block";
	else if (dp < m->pages || dp >= m->pages + m->npages)
		why = "not inside the block its id names";
	else if (va && dpage_vaddr(dp) != va)
		why = "backs another address";
	if (!why)
		return;
	fprintf(stderr, "uhmm: stale device page %p at %s (va %#lx): %s; w %#lx (ref %u, id %u, "
	        "vaddr %#lx), block %p pages %p..%p\n", (void *)dp, where, (unsigned long)va, why,
	        (unsigned long)w, (unsigned)(w & DP_REF_MASK), id, (unsigned long)dpage_vaddr(dp),
	        (void *)m, m ? (void *)m->pages : NULL, m ? (void *)(m->pages + m->npages) : NULL);
	uhmm_debug_trace_dump(h, (void *)(va ? va : dpage_vaddr(dp)));
	abort();
}

static int id_alloc(struct uhmm_devmem *m)
{
	pthread_mutex_lock(&g_mems_lock);
	for (uint32_t i = 0; i < MAX_MEMS; i++) {
		uint32_t id = (g_mems_hint + i) % MAX_MEMS;
		if (!atomic_load(&g_mems[id])) {
			m->id = id;
			atomic_store(&g_mems[id], m);
			g_mems_hint = id + 1;
			pthread_mutex_unlock(&g_mems_lock);
			return 0;
		}
	}
	pthread_mutex_unlock(&g_mems_lock);
	return -ENOSPC;
}

static void free_slot(struct uhmm_devmem *m, size_t idx)
{
	atomic_fetch_and(&m->bitmap[idx / 64], ~(1ULL << (idx % 64)));
}

/* The descriptor's last reference is gone: give its slot back.  Every
 * access to the block and its device happens before `used` is lowered,
 * which is this function's last touch of either (see "Lifetimes" above). */
static void release(struct uhmm_dpage *dp, bool clean)
{
	uint64_t w0 = atomic_fetch_sub(&dp->w, 1);
	TRACE(TR_DP_PUT, dp, 0, w0, clean);
	if (unlikely(atomic_load_explicit(&g_trace_on, memory_order_relaxed)) && !(w0 & DP_REF_MASK)) {
		fprintf(stderr, "uhmm: device page %p put with no reference (w %#lx)\n", (void *)dp,
		        (unsigned long)w0);
		struct uhmm_devmem *m0 = atomic_load(&g_mems[(w0 >> DP_ID_SHIFT) & 0xffff]);
		if (m0)
			uhmm_debug_trace_dump(m0->dev->h, (void *)dpage_vaddr(dp));
		abort();
	}
	if ((w0 & DP_REF_MASK) != 1)
		return;
	struct uhmm_devmem *m = devmem_of(dp);
	size_t idx = dpage_index(m, dp);
	TRACE(TR_DP_FREE, dp, m->host ? m->host + idx * PAGE_SIZE : NULL, w0, clean);
	/* Teardown waiting for used == 0 must wait for this tail too. */
	DELAY(DELAY_RELEASE);
	if (m->dev->ops.page_free)
		m->dev->ops.page_free(m->dev, m, idx);
	if (m->fd >= 0)
		fallocate(m->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		          (off_t)(idx * PAGE_SIZE), (off_t)PAGE_SIZE);
	if (m->host_registered && !clean) {
		uint64_t head = atomic_load(&m->dirty);
		do
			dpage_set_vaddr(dp, (uintptr_t)head << PAGE_SHIFT); /* the link */
		while (!atomic_compare_exchange_weak(&m->dirty, &head, (uint64_t)idx + 1));
	} else {
		/* An unregistered pool slot is emptied at once (no event to wait
		 * for): a free slot never keeps host memory. */
		if (m->host && m->fd < 0 && !clean)
			madvise(m->host + idx * PAGE_SIZE, PAGE_SIZE, MADV_DONTNEED);
		free_slot(m, idx);
	}
	atomic_fetch_sub_explicit(&m->used, 1, memory_order_release); /* m may be freed from here */
}

void dpage_put(struct uhmm_dpage *dp)
{
	release(dp, false);
}

void dpage_put_clean(struct uhmm_dpage *dp)
{
	release(dp, true);
}

static int cmp_size(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	return x < y ? -1 : x > y;
}

/* Empty the slots of dropped pages (application thread, alloc_lock held).
 * Each madvise of the (registered) pool raises a REMOVE event that the
 * caller waits for the service thread to read, and every event in the
 * queue makes userfaultfd calls fail with EAGAIN meanwhile: the slots are
 * sorted and emptied a run at a time. */
static void drain_dirty(struct uhmm_devmem *m)
{
	uint64_t head = atomic_exchange(&m->dirty, 0);
	size_t n = 0, cap = 64;
	size_t *idx = malloc(cap * sizeof(*idx));
	while (head) {
		size_t i = (size_t)head - 1;
		head = dpage_vaddr(&m->pages[i]) >> PAGE_SHIFT;
		if (idx && n == cap) {
			size_t *more = realloc(idx, 2 * cap * sizeof(*idx));
			if (!more) {
				free(idx);
				idx = NULL;
			} else {
				idx = more;
				cap *= 2;
			}
		}
		if (!idx) {
			/* Out of memory: one slot at a time. */
			TRACE(TR_DRAIN, m->host + i * PAGE_SIZE, 0, PAGE_SIZE, 0);
			madvise(m->host + i * PAGE_SIZE, PAGE_SIZE, MADV_DONTNEED);
			free_slot(m, i);
			continue;
		}
		idx[n++] = i;
	}
	if (!idx)
		return;
	qsort(idx, n, sizeof(*idx), cmp_size);
	for (size_t a = 0, b; a < n; a = b) {
		for (b = a + 1; b < n && idx[b] == idx[b - 1] + 1; b++)
			;
		TRACE(TR_DRAIN, m->host + idx[a] * PAGE_SIZE, 0, (b - a) * PAGE_SIZE, 0);
		madvise(m->host + idx[a] * PAGE_SIZE, (b - a) * PAGE_SIZE, MADV_DONTNEED);
		for (size_t k = a; k < b; k++)
			free_slot(m, idx[k]);
	}
	free(idx);
}

/* Claim up to n free pages of m, in runs; returns how many. */
static size_t alloc_from(struct uhmm_devmem *m, size_t n, struct uhmm_dpage **out)
{
	size_t got = 0;
	pthread_mutex_lock(&m->alloc_lock);
	if (atomic_load(&m->dirty))
		drain_dirty(m);
	for (size_t scanned = 0; scanned < m->nwords && got < n; scanned++) {
		size_t w = (m->hint + scanned) % m->nwords;
		uint64_t bits = atomic_load(&m->bitmap[w]);
		while (bits != ~0ULL && got < n) {
			unsigned b = (unsigned)__builtin_ctzll(~bits);
			size_t idx = w * 64 + b;
			if (idx >= m->npages)
				break;
			atomic_fetch_or(&m->bitmap[w], 1ULL << b);
			bits |= 1ULL << b;
			struct uhmm_dpage *dp = &m->pages[idx];
			atomic_store(&dp->w, ((uint64_t)m->id << DP_ID_SHIFT) | 1);
			TRACE(TR_DP_ALLOC, dp, m->host ? m->host + idx * PAGE_SIZE : NULL, m->id, 0);
			out[got++] = dp;
		}
		if (got < n)
			continue;
		m->hint = w;
	}
	/* Claimed but not yet counted: teardown must not pass here (d->lock). */
	DELAY(DELAY_ALLOC);
	atomic_fetch_add(&m->used, got);
	pthread_mutex_unlock(&m->alloc_lock);
	return got;
}

static int devmem_create(struct uhmm_device *d, size_t size, unsigned flags, const char *path,
                         struct uhmm_devmem **out);

/* Claim n/64 whole free bitmap words of m (n a multiple of 64). */
static size_t alloc_words(struct uhmm_devmem *m, size_t n, struct uhmm_dpage **out)
{
	size_t words = n / 64, got = 0;
	pthread_mutex_lock(&m->alloc_lock);
	for (size_t w = 0; w + words <= m->nwords && !got; w += words) {
		size_t k;
		for (k = 0; k < words && atomic_load(&m->bitmap[w + k]) == 0; k++)
			;
		if (k < words)
			continue;
		for (k = 0; k < words; k++)
			atomic_store(&m->bitmap[w + k], ~0ULL);
		for (size_t i = 0; i < n; i++) {
			struct uhmm_dpage *dp = &m->pages[w * 64 + i];
			atomic_store(&dp->w, ((uint64_t)m->id << DP_ID_SHIFT) | 1);
			TRACE(TR_DP_ALLOC, dp, m->host ? m->host + (w * 64 + i) * PAGE_SIZE : NULL, m->id, 1);
			out[i] = dp;
		}
		got = n;
		atomic_fetch_add(&m->used, n);
	}
	pthread_mutex_unlock(&m->alloc_lock);
	return got;
}

/* Add a chunk of the class the device grows by, if that class is the one
 * asked for (coherent or private) and capacity allows.  d->lock held. */
static bool grow(struct uhmm_device *d, size_t total, bool coherent)
{
	unsigned f = d->grow_flags;
	if (d->dying)
		return false;
	bool is_coherent = (f & UHMM_DEVMEM_ALLOW_MIGRATION) && !(f & UHMM_DEVMEM_UNADDRESSABLE);
	bool is_private = f & UHMM_DEVMEM_UNADDRESSABLE;
	if (!d->grow_chunk || total + d->grow_chunk > d->capacity ||
	    (coherent ? !is_coherent : !is_private))
		return false;
	struct uhmm_devmem *m;
	return devmem_create(d, d->grow_chunk, f, NULL, &m) == 0;
}

size_t devmem_alloc_contig(struct uhmm_device *d, size_t n, struct uhmm_dpage **out)
{
	if (atomic_load(&d->fail) & (UHMM_DUMMY_FAIL_ALLOC | UHMM_DUMMY_LOST))
		return 0;
	size_t got = 0;
	pthread_mutex_lock(&d->lock);
	for (;;) {
		size_t total = 0;
		for (struct uhmm_devmem *m = d->mems; m && !got; m = m->next) {
			total += m->npages * PAGE_SIZE;
			if (!atomic_load(&m->dead) && devmem_coherent(m))
				got = alloc_words(m, n, out);
		}
		if (got || !grow(d, total, true))
			break;
	}
	pthread_mutex_unlock(&d->lock);
	return got;
}

size_t devmem_alloc(struct uhmm_device *d, size_t n, struct uhmm_dpage **out)
{
	if (atomic_load(&d->fail) & (UHMM_DUMMY_FAIL_ALLOC | UHMM_DUMMY_LOST))
		return 0;
	size_t got = 0;
	pthread_mutex_lock(&d->lock);
	for (;;) {
		size_t total = 0;
		for (struct uhmm_devmem *m = d->mems; m && got < n; m = m->next) {
			total += m->npages * PAGE_SIZE;
			if (atomic_load(&m->dead) || !(m->flags & UHMM_DEVMEM_UNADDRESSABLE))
				continue;
			if (atomic_load(&m->used) >= m->npages && !atomic_load(&m->dirty))
				continue;
			got += alloc_from(m, n - got, out + got);
		}
		if (got == n || !grow(d, total, false))
			break;
	}
	pthread_mutex_unlock(&d->lock);
	return got;
}

/* The memory file of an addressable block: a named file or a memfd. */
static int open_backing(struct uhmm *h, const char *path, size_t size, bool coherent)
{
	int fd = path ? open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)
	              : memfd_create("uhmm-devmem", MFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	struct statfs sf;
	int r = 0;
	if (fstat(fd, &st))
		r = -errno;
	else if ((size_t)st.st_size < size && ftruncate(fd, (off_t)size))
		r = -errno;
	/* Coherent pages must be write-protectable while they move home:
	 * userfaultfd write-protect works on shmem (tmpfs, memfd) only. */
	else if (coherent && (!(h->features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM) || !h->use_wp ||
	                      fstatfs(fd, &sf) || sf.f_type != TMPFS_MAGIC))
		r = -EOPNOTSUPP;
	if (r) {
		close(fd);
		return r;
	}
	return fd;
}

/* d->lock held by the caller. */
static int devmem_create(struct uhmm_device *d, size_t size, unsigned flags, const char *path,
                         struct uhmm_devmem **out)
{
	struct uhmm *h = d->h;
	struct uhmm_devmem *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	int rc = -ENOMEM;
	m->fd = -1;
	m->dev = d;
	m->flags = flags;
	m->npages = size / PAGE_SIZE;
	m->nwords = (m->npages + 63) / 64;
	pthread_mutex_init(&m->alloc_lock, NULL);
	/* Descriptors are touched only when used: map them lazily. */
	size_t dsz = m->npages * sizeof(struct uhmm_dpage);
	m->pages = mmap(NULL, dsz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	m->bitmap = calloc(m->nwords, sizeof(uint64_t));
	if (m->pages == MAP_FAILED || !m->bitmap)
		goto fail;
	/* Bits past the end are permanently "allocated". */
	if (m->npages % 64)
		m->bitmap[m->nwords - 1] = ~0ULL << (m->npages % 64);
	if (!(flags & UHMM_DEVMEM_UNADDRESSABLE)) {
		/* Addressable: a memory file, mapped shared for the device. */
		m->fd = open_backing(h, path, size, flags & UHMM_DEVMEM_ALLOW_MIGRATION);
		if (m->fd < 0) {
			rc = m->fd;
			goto fail;
		}
		m->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
		if (m->host == MAP_FAILED) {
			m->host = NULL;
			goto fail;
		}
		madvise(m->host, size, MADV_DONTFORK);
		if (flags & UHMM_DEVMEM_ALLOW_MIGRATION)
			d->coherent = true;
	} else if (d->flags & UHMM_DEVICE_HOST_BACKED) {
		m->host = mmap(NULL, size, PROT_READ | PROT_WRITE,
		               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (m->host == MAP_FAILED) {
			m->host = NULL;
			goto fail;
		}
		/* A page shared with a child after fork could not be moved out. */
		madvise(m->host, size, MADV_DONTFORK);
		madvise(m->host, size, MADV_NOHUGEPAGE);
		if (h->use_move) {
			if (pool_register(h, (uintptr_t)m->host, (uintptr_t)m->host + size))
				goto fail;
			if (uffd_register(h->uffd, (uintptr_t)m->host, size, false, NULL)) {
				pool_forget(h, (uintptr_t)m->host, (uintptr_t)m->host + size);
				goto fail;
			}
			m->host_registered = true;
		}
	}
	if (d->sim_memory) {
		/* Stands for memory on the device: the CPU never maps it for
		 * the application, only the device's copy callbacks reach it. */
		m->sim = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		              -1, 0);
		if (m->sim == MAP_FAILED) {
			m->sim = NULL;
			goto fail;
		}
		madvise(m->sim, size, MADV_DONTFORK);
	}
	if (id_alloc(m))
		goto fail;
	TRACE(TR_DEVMEM_ADD, m->pages, m->host, m->npages * PAGE_SIZE, m->id);
	UHMM_PROBE(devmem_add, d->name, m->id, m->npages * PAGE_SIZE, flags);
	m->next = d->mems;
	d->mems = m;
	*out = m;
	return 0;
fail:
	if (m->host_registered) {
		uffd_unregister(h->uffd, (uintptr_t)m->host, size);
		pool_forget(h, (uintptr_t)m->host, (uintptr_t)m->host + size);
	}
	if (m->host)
		munmap(m->host, size);
	if (m->sim)
		munmap(m->sim, size);
	if (m->fd >= 0)
		close(m->fd);
	if (m->pages != MAP_FAILED && m->pages)
		munmap(m->pages, dsz);
	free((void *)m->bitmap);
	free(m);
	return rc;
}

static int devmem_add(struct uhmm_device *d, const char *path, size_t size, unsigned flags,
                      struct uhmm_devmem **out)
{
	if (!d || !out || size == 0 || !aligned(size))
		return -EINVAL;
	if (flags & ~(UHMM_DEVMEM_DEVICE | UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE))
		return -EINVAL;
	flags |= UHMM_DEVMEM_DEVICE;
	if ((flags & UHMM_DEVMEM_UNADDRESSABLE) && !(flags & UHMM_DEVMEM_ALLOW_MIGRATION))
		return -EINVAL;
	if (size / PAGE_SIZE > UINT32_MAX)
		return -EINVAL;
	bool addressable = !(flags & UHMM_DEVMEM_UNADDRESSABLE);
	/* The CPU addresses these in place: uhmm must be able to map them. */
	if (addressable && !(d->flags & UHMM_DEVICE_HOST_BACKED))
		return -EOPNOTSUPP;
	if (path && !addressable)
		return -EOPNOTSUPP;
	/* Coherent granules are allocated in whole 2 MiB runs. */
	if (addressable && (flags & UHMM_DEVMEM_ALLOW_MIGRATION) && size % UHMM_COHERENT_GRANULE)
		size = (size / UHMM_COHERENT_GRANULE + 1) * UHMM_COHERENT_GRANULE;
	pthread_mutex_lock(&d->lock);
	int r = d->dying ? -EBUSY : devmem_create(d, size, flags, path, out);
	pthread_mutex_unlock(&d->lock);
	return r;
}

UHMM_API int uhmm_devmem_add(struct uhmm_device *d, size_t size, unsigned flags,
                             struct uhmm_devmem **out)
{
	return devmem_add(d, NULL, size, flags, out);
}

UHMM_API int uhmm_devmem_add_file(struct uhmm_device *d, const char *path, size_t size,
                                  unsigned flags, struct uhmm_devmem **out)
{
	if (!path)
		return -EINVAL;
	return devmem_add(d, path, size, flags, out);
}

/* ---- persistent memory: mapped by the application, never migrated ---- */

UHMM_API int uhmm_devmem_map(struct uhmm_devmem *m, size_t offset, size_t len, int prot, void **addr)
{
	if (!m || !addr || !len || !aligned(len) || !aligned(offset) || offset > m->npages * PAGE_SIZE ||
	    len > m->npages * PAGE_SIZE - offset || (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)))
		return -EINVAL;
	if (!devmem_persistent(m) || m->fd < 0)
		return -EOPNOTSUPP;
	if (atomic_load(&m->dead))
		return -EBUSY;
	void *p = mmap(NULL, len, prot, MAP_SHARED, m->fd, (off_t)offset);
	if (p == MAP_FAILED)
		return -errno;
	int r = persist_register(m, (uintptr_t)p, (uintptr_t)p + len);
	if (r) {
		munmap(p, len);
		return r;
	}
	atomic_fetch_add(&m->maps, 1);
	*addr = p;
	return 0;
}

UHMM_API int uhmm_devmem_unmap(struct uhmm_devmem *m, void *addr, size_t len)
{
	if (!m || check_span(addr, len))
		return -EINVAL;
	struct range_ent r;
	unsigned tok = ebr_enter();
	bool ok = range_lookup((uintptr_t)addr, &r) && r.persist && r.mem == m &&
	          r.start == (uintptr_t)addr && r.end == (uintptr_t)addr + len;
	ebr_exit(tok);
	if (!ok)
		return -EINVAL;
	persist_forget(m->dev->h, r.start, r.end);
	munmap(addr, len);
	atomic_fetch_sub(&m->maps, 1);
	return 0;
}

void devmem_set_dead(struct uhmm_device *d, struct uhmm_devmem *m, bool dead)
{
	/* Under the lock allocators hold from choosing a block until its
	 * pages are counted in `used`: once this returns, every allocation
	 * from m is either counted or will never happen. */
	pthread_mutex_lock(&d->lock);
	atomic_store(&m->dead, dead);
	pthread_mutex_unlock(&d->lock);
}

/* How long evacuation waits for pages it cannot take yet (allocated by a
 * migration still in flight, or held by another thread) while none comes
 * home, before it gives up with -EBUSY. */
#define EVAC_PATIENCE_NS 5000000000LL

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int devmem_evacuate(struct uhmm_devmem *m)
{
	struct uhmm *h = m->dev->h;
	/* Pages allocated by a migration still in flight get their vaddr
	 * when it finishes, and a release still running keeps `used` raised
	 * (see "Lifetimes"): retry until every used page came home, or no
	 * page did for EVAC_PATIENCE_NS. */
	int64_t since = now_ns();
	for (unsigned pass = 0; atomic_load(&m->used) > 0; pass++) {
		size_t before = atomic_load(&m->used);
		int failed = 0;
		for (size_t i = 0; i < m->npages && atomic_load(&m->used) > 0; i++) {
			if (!(atomic_load(&m->bitmap[i / 64]) >> (i % 64) & 1))
				continue;
			struct uhmm_dpage *dp = &m->pages[i];
			if (dpage_ref(dp) == 0)
				continue;
			int r = migrate_dpage_home(h, dp);
			if (r && r != -EAGAIN)
				failed++;
		}
		if (failed)
			return -EBUSY;
		size_t after = atomic_load(&m->used);
		if (!after)
			break;
		if (after < before)
			since = now_ns();
		else if (now_ns() - since > EVAC_PATIENCE_NS)
			return -EBUSY;
		if (pass < 64) {
			sched_yield();
		} else {
			struct timespec ts = { 0, 100000 };
			nanosleep(&ts, NULL);
		}
	}
	return 0;
}

/* Debug: no page entry may still name a descriptor of a block being freed. */
struct stale_arg {
	struct uhmm *h;
	struct uhmm_devmem *m;
};

static int stale_one(uintptr_t addr, _Atomic uint64_t *e, void *arg)
{
	struct stale_arg *sa = arg;
	uint64_t v = atomic_load(e);
	struct uhmm_dpage *dp = pte_dpage(v);
	if ((pte_state(v) == UHMM_STATE_DEVICE || pte_state(v) == UHMM_STATE_DEVICE_COHERENT) &&
	    dp >= sa->m->pages && dp < sa->m->pages + sa->m->npages) {
		fprintf(stderr, "uhmm: block %u (pages %p) freed while page %#lx (entry %#lx) still "
		        "names its descriptor %p\n", sa->m->id, (void *)sa->m->pages,
		        (unsigned long)addr, (unsigned long)v, (void *)dp);
		uhmm_debug_trace_dump(sa->h, (void *)addr);
		abort();
	}
	return 0;
}

void devmem_destroy(struct uhmm_devmem *m)
{
	if (unlikely(atomic_load_explicit(&g_trace_on, memory_order_relaxed))) {
		struct stale_arg sa = { m->dev->h, m };
		ptable_walk(&m->dev->h->pt, 0, UINTPTR_MAX & ~PAGE_MASK, stale_one, &sa);
	}
	struct uhmm *h = m->dev->h;
	size_t size = m->npages * PAGE_SIZE;
	TRACE(TR_DEVMEM_DESTROY, m->pages, m->host, size, m->id);
	UHMM_PROBE(devmem_remove, m->dev->name, m->id, size);
	if (m->host) {
		if (m->host_registered) {
			uffd_unregister(h->uffd, (uintptr_t)m->host, size);
			pool_forget(h, (uintptr_t)m->host, (uintptr_t)m->host + size);
		}
		munmap(m->host, size);
	}
	if (m->sim)
		munmap(m->sim, size);
	if (m->fd >= 0) {
		persist_forget_mem(m); /* mappings stay valid: the application owns them */
		close(m->fd);
	}
	atomic_store(&g_mems[m->id], NULL);
	munmap(m->pages, m->npages * sizeof(struct uhmm_dpage));
	free((void *)m->bitmap);
	pthread_mutex_destroy(&m->alloc_lock);
	free(m);
}

UHMM_API int uhmm_devmem_remove(struct uhmm_devmem *m)
{
	if (!m)
		return -EINVAL;
	struct uhmm_device *d = m->dev;
	if (atomic_load(&m->maps) > 0)
		return -EBUSY; /* persistent memory the application still maps */
	service_quiesce(d->h);
	pthread_mutex_lock(&d->evac_lock); /* a release walking the list is done */
	devmem_set_dead(d, m, true);
	int r = devmem_evacuate(m);
	if (r) {
		devmem_set_dead(d, m, false);
		pthread_mutex_unlock(&d->evac_lock);
		return r;
	}
	pthread_mutex_lock(&d->lock);
	for (struct uhmm_devmem **pp = &d->mems; *pp; pp = &(*pp)->next) {
		if (*pp == m) {
			*pp = m->next;
			break;
		}
	}
	pthread_mutex_unlock(&d->lock);
	pthread_mutex_unlock(&d->evac_lock);
	/* Readers that found a page through the table are done once EBR says so. */
	ebr_synchronize();
	devmem_destroy(m);
	return 0;
}

UHMM_API unsigned uhmm_devmem_flags(const struct uhmm_devmem *m) { return m ? m->flags : 0; }
UHMM_API size_t uhmm_devmem_npages(const struct uhmm_devmem *m) { return m ? m->npages : 0; }
UHMM_API size_t uhmm_devmem_used(const struct uhmm_devmem *m)
{
	return m ? atomic_load(&((struct uhmm_devmem *)m)->used) : 0;
}
UHMM_API void *uhmm_devmem_host_addr(const struct uhmm_devmem *m, size_t idx)
{
	if (!m || !m->host || idx >= m->npages)
		return NULL;
	return m->host + idx * PAGE_SIZE;
}
UHMM_API struct uhmm_device *uhmm_devmem_device(const struct uhmm_devmem *m)
{
	return m ? m->dev : NULL;
}
