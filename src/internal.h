/* SPDX-License-Identifier: MIT */
/*
 * Internal declarations shared by the library's sources.
 *
 * The one rule every file obeys (it is what makes SIGBUS mode and the
 * service thread safe):
 *
 *   uhmm never loads or stores managed memory directly while it holds any
 *   lock.  Data moves with userfaultfd ioctls (MOVE, COPY, ZEROPAGE) or
 *   through /proc/self/mem, which fails instead of faulting.
 *
 * So a synchronous SIGBUS from managed memory never interrupts uhmm code
 * holding a lock, and the SIGBUS handler may take uhmm's locks (never
 * malloc).  The service thread never blocks on a page lock: a migration
 * holding one may itself wait for the service thread to read a REMOVE
 * event (its own MADV_DONTNEED in the copy fallback).
 *
 * Lock order: page locks (ascending address; a thread that holds one only
 * try-locks more: the entry at an mremap's destination stays held for a
 * move in flight until its source's holder lets go, whatever their
 * addresses, see events.c) → the identity gate (gate.c)
 * → device locks (a backend's own) → devmem allocation lock → registry
 * lock.  Mirror invalidate callbacks run with page locks held and may take
 * device locks; a device never waits for a page lock while holding its own
 * lock.  Inside the gate nothing waits for the service thread (it closes
 * the gate to read): no madvise or munmap of registered memory, no touch
 * of managed or pool memory, no blocking userfaultfd retry.
 *
 * One exception to "no touch of pool memory", out of the gate: a copy
 * device's callback reads pages in the move-staging area (stage.c) while
 * the migration holds their page locks.  It cannot fault: a page is read
 * only once a move put it there, and the slot, claimed by that migration,
 * is emptied only after the pages are unlocked.
 */
#ifndef UHMM_INTERNAL_H
#define UHMM_INTERNAL_H

#include "uhmm.h"

#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define UHMM_API __attribute__((visibility("default")))

/*
 * Sized structs (include/uhmm.h, "How the ABI evolves").  `v1` is the
 * size of the struct's first version, `known` the end of the last field
 * this library knows: both are offsetofend of a field, never sizeof, so
 * that a newer caller's field placed in what is tail padding here is still
 * checked.  Returns the number of bytes to copy in or out (min(sz, known))
 * or -EINVAL.
 */
#define offsetofend(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))
static inline long sized_check(const void *p, size_t v1, size_t known)
{
	size_t sz = *(const size_t *)p;
	if (sz < v1 || sz > UHMM_SZ_MAX)
		return -EINVAL;
	for (size_t i = known; i < sz; i++)
		if (((const unsigned char *)p)[i])
			return -EINVAL; /* asks for something this library does not know */
	return (long)(sz < known ? sz : known);
}

/* First-version and known sizes of each sized struct.  When a field is
 * appended, *_KNOWN moves to it and *_V1 stays. */
#define UHMM_OPTIONS_V1    offsetofend(struct uhmm_options, reserved)
#define UHMM_OPTIONS_KNOWN offsetofend(struct uhmm_options, reserved)
#define UHMM_STATS_V1      offsetofend(struct uhmm_stats, pages_ahead)
#define UHMM_STATS_KNOWN   offsetofend(struct uhmm_stats, pages_unshared)
#define UHMM_SYSINFO_V1    offsetofend(struct uhmm_sysinfo, reserved)
#define UHMM_SYSINFO_KNOWN offsetofend(struct uhmm_sysinfo, reserved)
#define UHMM_DUMMY_V1      offsetofend(struct uhmm_dummy_options, path)
#define UHMM_DUMMY_KNOWN   offsetofend(struct uhmm_dummy_options, flags)
/* No tail padding (the header's rule): a designated initializer that names
 * every member leaves padding bytes indeterminate, and the zero-tail check
 * of a newer library would read them. */
_Static_assert(UHMM_OPTIONS_KNOWN == sizeof(struct uhmm_options), "tail padding");
_Static_assert(UHMM_STATS_KNOWN == sizeof(struct uhmm_stats), "tail padding");
_Static_assert(UHMM_SYSINFO_KNOWN == sizeof(struct uhmm_sysinfo), "tail padding");
_Static_assert(UHMM_DUMMY_KNOWN == sizeof(struct uhmm_dummy_options), "tail padding");

#define PAGE_SHIFT 12
#define PAGE_SIZE  (1UL << PAGE_SHIFT)
#define PAGE_MASK  (PAGE_SIZE - 1)
#define HUGE_SIZE  (2UL << 20)

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define MIN(a, b)   ((a) < (b) ? (a) : (b))
#define MAX(a, b)   ((a) > (b) ? (a) : (b))

/* Largest number of pages handled as one batch (one kernel call at most). */
#define BATCH_PAGES 512
#define MAX_DEVICES 32

/* ------------------------------------------------------------------------
 * Epoch-based reclamation (ebr.c): readers never block writers; a writer
 * frees what it unpublished only once every reader that could see it left.
 * Signal-safe on the read side (two atomic counters).
 * ---------------------------------------------------------------------- */
unsigned ebr_enter(void);
void ebr_exit(unsigned token);
void ebr_retire(void *p);  /* free(p) later; never from a signal handler */
void ebr_synchronize(void); /* wait until all current readers left, then reclaim */
void ebr_reset_child(void); /* after fork, in the child: no reader exists */

/* ------------------------------------------------------------------------
 * Debug trace (trace.c, UHMM_DEBUG_TRACE=1): a ring of recent page-lock
 * transitions, kernel calls and device-page events.  Off: one load.
 * ---------------------------------------------------------------------- */
enum {
	TR_LOCK = 1, TR_UNLOCK, TR_MOVE, TR_COPY, TR_ZERO, TR_WP, TR_MADV, TR_PREAD, TR_PWRITE,
	TR_EV_REMOVE, TR_EV_UNMAP, TR_EV_REMAP, TR_DP_ALLOC, TR_DP_PUT, TR_DP_FREE, TR_DP_VA,
	TR_REG, TR_UNREG, TR_RANGE_ADD, TR_RANGE_REMOVE, TR_FORK, TR_DEVMEM_ADD,
	TR_DEVMEM_DESTROY, TR_SCAN, TR_DRAIN, TR_SIGBUS, TR_MOVE_UNREPORTED, TR_REMAP_CHAIN,
};
extern _Atomic int g_trace_on;
void trace_init(void);
void trace_rec(unsigned kind, uintptr_t pc, uintptr_t a, uintptr_t b, uint64_t x, uint64_t y);
#define TRACE_PC(kind, pc, a, b, x, y)                                                     \
	do {                                                                               \
		if (__builtin_expect(atomic_load_explicit(&g_trace_on, memory_order_relaxed), 0)) \
			trace_rec((kind), (uintptr_t)(pc), (uintptr_t)(a), (uintptr_t)(b),  \
			          (uint64_t)(x), (uint64_t)(y));                             \
	} while (0)
#define TRACE(kind, a, b, x, y) TRACE_PC(kind, __builtin_return_address(0), a, b, x, y)

/* ------------------------------------------------------------------------
 * Delay points (delay.c, UHMM_DEBUG_DELAY=name:us,...): hold a thread at a
 * named point so a test can force an interleaving.  Off: one load.
 * ---------------------------------------------------------------------- */
enum { DELAY_RELEASE, DELAY_ALLOC, DELAY_SERVICE, DELAY__COUNT };
extern _Atomic unsigned g_delay_on;
void delay_init(void);
void delay_at_(unsigned point);
#define DELAY(point)                                                                        \
	do {                                                                                \
		if (__builtin_expect(atomic_load_explicit(&g_delay_on, memory_order_relaxed) &    \
		                     (1u << (point)), 0))                                         \
			delay_at_(point);                                                   \
	} while (0)

/* ------------------------------------------------------------------------
 * Sparse page table (ptable.c): a radix tree of 64-bit entries keyed by
 * virtual page number.  Nodes are installed with CAS and never freed before
 * the table is destroyed, so lookups are lock-free.  Cost: one 4 KiB leaf
 * per 2 MiB of address space touched (8 bytes a page), interior nodes
 * negligible.  Nodes come from mmap'ed arenas (no malloc: the SIGBUS path
 * may allocate).
 * ---------------------------------------------------------------------- */
struct ptable {
	_Atomic(void *) root;
	pthread_mutex_t arena_lock;
	char *arena;        /* current arena */
	size_t arena_used;
	void *arenas;       /* list of arenas (first word links) */
	size_t bytes;       /* node bytes allocated (for stats) */
};

void ptable_init(struct ptable *pt);
void ptable_destroy(struct ptable *pt);
/* Entry of a page, or NULL if absent (create: allocate; NULL on ENOMEM). */
_Atomic uint64_t *ptable_entry(struct ptable *pt, uintptr_t addr, bool create);
/* Call fn for every page in [start, end) whose leaf exists (entries may be 0).
 * fn returns non-zero to stop; that value is returned. */
typedef int (*ptable_fn)(uintptr_t addr, _Atomic uint64_t *e, void *arg);
int ptable_walk(struct ptable *pt, uintptr_t start, uintptr_t end, ptable_fn fn, void *arg);

/*
 * A page entry:
 *   bits 0-2  enum uhmm_state (MIGRATING is BUSY over the old state)
 *   bit  3    BUSY: the page is locked (migration, fault resolution)
 *   bit  4    WAITERS: someone sleeps on the futex of this entry
 *   bit  5    DISCARD: the CPU side discarded the page while it was BUSY;
 *             the unlocker makes it NONE (and frees its device page)
 *   bit  6    ZERO: populated with the shared zero page (a hint)
 *   bit  7    REMAP: mremap moved the page while it was BUSY; its new
 *             address's entry is held locked until the unlocker moves it
 *   bit  8    UNMAPPED: with DISCARD, the discard was an unmap
 *   bit  9    INSTALL: mremap moved a page to this address while it was BUSY
 *   bits 11-63 device page descriptor pointer (state DEVICE*)
 * Invariants: state DEVICE ⇔ dpage != NULL and the dpage holds one
 * reference for the entry; the CPU page is mapped ⇔ state SYSTEM (or
 * DEVICE_COHERENT), except while BUSY.
 */
#define PTE_STATE_MASK 0x7ULL
#define PTE_BUSY       (1ULL << 3)
#define PTE_WAITERS    (1ULL << 4)
#define PTE_DISCARD    (1ULL << 5)
#define PTE_ZERO       (1ULL << 6)
#define PTE_REMAP      (1ULL << 7) /* mremap moved the page while BUSY: the
                                      unlocker moves the entry (remap_release) */
#define PTE_UNMAPPED   (1ULL << 8) /* with DISCARD: the page was unmapped, not madvised */
#define PTE_INSTALL    (1ULL << 9) /* mremap moved another page here while BUSY: the
                                      holder's value is stale; the unlocker hands
                                      the entry to the pending move (remap_release) */
#define PTE_MARKS      (PTE_DISCARD | PTE_REMAP | PTE_UNMAPPED | PTE_INSTALL)
#define PTE_DPAGE_SHIFT 11

struct uhmm_dpage;
static inline unsigned pte_state(uint64_t v) { return (unsigned)(v & PTE_STATE_MASK); }
static inline struct uhmm_dpage *pte_dpage(uint64_t v)
{
	return (struct uhmm_dpage *)(uintptr_t)(v >> PTE_DPAGE_SHIFT);
}
static inline uint64_t pte_make(unsigned state, struct uhmm_dpage *dp, uint64_t flags)
{
	return ((uint64_t)(uintptr_t)dp << PTE_DPAGE_SHIFT) | flags | state;
}

/* Lock a page entry, sleeping on a futex; returns the value before locking
 * (BUSY clear).  Signal-safe. */
uint64_t pte_lock(_Atomic uint64_t *e);
/* Try once; on success *old is the value before locking. */
bool pte_trylock(_Atomic uint64_t *e, uint64_t *old);
/* Mark that a service thread waits for this entry (see pte_unlock). */
void pte_note_waiter(struct uhmm *h, _Atomic uint64_t *e);

/* ------------------------------------------------------------------------
 * Device memory (devmem.c).
 * ---------------------------------------------------------------------- */

/*
 * Device page descriptor (struct page of ZONE_DEVICE): one 64-bit word, so
 * the metadata of a migrated page is 8 bytes here plus its 8-byte entry.
 *   bits 0-7   reference count (0 = free; uhmm holds one per page table
 *              entry, so it never exceeds a few)
 *   bits 8-23  block id (index in the devmem table)
 *   bits 24-63 virtual page number it backs (valid while referenced; a
 *              free slot on a dirty stack keeps its link there)
 * Written when allocated, never before: descriptors of untouched device
 * memory cost nothing.
 */
struct uhmm_dpage {
	_Atomic uint64_t w;
};
#define DP_REF_MASK  0xffULL
#define DP_ID_SHIFT  8
#define DP_VPN_SHIFT 24

static inline unsigned dpage_ref(const struct uhmm_dpage *dp)
{
	return (unsigned)(atomic_load(&((struct uhmm_dpage *)dp)->w) & DP_REF_MASK);
}
static inline uintptr_t dpage_vaddr(const struct uhmm_dpage *dp)
{
	return (uintptr_t)(atomic_load(&((struct uhmm_dpage *)dp)->w) >> DP_VPN_SHIFT) << PAGE_SHIFT;
}
static inline void dpage_set_vaddr(struct uhmm_dpage *dp, uintptr_t va)
{
	uint64_t w = atomic_load(&dp->w), nw;
	do
		nw = (w & ((1ULL << DP_VPN_SHIFT) - 1)) | ((uint64_t)(va >> PAGE_SHIFT) << DP_VPN_SHIFT);
	while (!atomic_compare_exchange_weak(&dp->w, &w, nw));
	TRACE(TR_DP_VA, dp, va, w, nw);
}

struct uhmm_devmem {
	struct uhmm_device *dev;
	unsigned flags;
	uint32_t id;
	size_t npages;
	struct uhmm_dpage *pages;
	_Atomic uint64_t *bitmap;   /* 1 = allocated */
	size_t nwords;
	pthread_mutex_t alloc_lock; /* serialises allocators; frees are lock-free */
	size_t hint;                /* next word to scan */
	_Atomic size_t used;
	char *host;                 /* HOST_BACKED: the pool */
	char *sim;                  /* a simulated copy device's own memory (dev->sim_memory) */
	bool host_registered;       /* pool registered with the uffd (UFFDIO_MOVE) */
	_Atomic bool dead;          /* being removed or device lost: no allocation */
	_Atomic uint64_t dirty;     /* stack of freed slots still holding data (index + 1) */
	int fd;                     /* addressable classes: the memory file (else -1) */
	_Atomic long maps;          /* persistent: live uhmm_devmem_map mappings */
	struct uhmm_devmem *next;   /* device's list, under dev->lock */
};

struct uhmm_devmem *devmem_of(const struct uhmm_dpage *dp);
static inline bool devmem_coherent(const struct uhmm_devmem *m)
{
	return (m->flags & UHMM_DEVMEM_ALLOW_MIGRATION) && !(m->flags & UHMM_DEVMEM_UNADDRESSABLE);
}
static inline bool devmem_persistent(const struct uhmm_devmem *m)
{
	return !(m->flags & UHMM_DEVMEM_ALLOW_MIGRATION);
}
/* n contiguous pages of one coherent block of d (0 or n). */
size_t devmem_alloc_contig(struct uhmm_device *d, size_t n, struct uhmm_dpage **out);
static inline size_t dpage_index(const struct uhmm_devmem *m, const struct uhmm_dpage *dp)
{
	return (size_t)(dp - m->pages);
}
static inline char *dpage_host(const struct uhmm_devmem *m, const struct uhmm_dpage *dp)
{
	return m->host + dpage_index(m, dp) * PAGE_SIZE;
}
/* Allocate up to n pages of device d (runs contiguous where possible).
 * Returns how many were allocated (ref = 1 each). */
size_t devmem_alloc(struct uhmm_device *d, size_t n, struct uhmm_dpage **out);
/* Drop a reference; at zero the page is freed and page_free called.
 * "clean": its host slot is already empty (data left by UFFDIO_MOVE);
 * otherwise a registered host slot is emptied before reuse (that needs an
 * madvise, which raises a REMOVE event, so it is done later by an
 * allocating application thread, never here). */
void dpage_put(struct uhmm_dpage *dp);
void dpage_put_clean(struct uhmm_dpage *dp);
int devmem_evacuate(struct uhmm_devmem *m);
/* Mark m dead (no allocation from it) or alive again, ordered with allocators. */
void devmem_set_dead(struct uhmm_device *d, struct uhmm_devmem *m, bool dead);
/* Debug (UHMM_DEBUG_TRACE): the descriptor an entry holds must be live —
 * referenced, inside the block its id names, backing va (0: unknown).
 * A stale one is reported with the page's trace and aborts. */
void dpage_check_(struct uhmm *h, const struct uhmm_dpage *dp, uintptr_t va, const char *where);
#define dpage_check(h, dp, va, where)                                                      \
	do {                                                                               \
		if (__builtin_expect(atomic_load_explicit(&g_trace_on, memory_order_relaxed), 0)) \
			dpage_check_((h), (dp), (va), (where));                             \
	} while (0)
void uhmm_debug_trace_dump(struct uhmm *h, const void *addr);
void devmem_destroy(struct uhmm_devmem *m);

/* ------------------------------------------------------------------------
 * Devices (device.c).
 * ---------------------------------------------------------------------- */
struct uhmm_device {
	struct uhmm *h;
	char name[32];
	struct uhmm_device_ops ops;
	unsigned flags;
	void *priv;
	int slot;                      /* index in h->devices */
	pthread_mutex_t lock;          /* devmem list; allocations (devmem.c) */
	pthread_mutex_t evac_lock;     /* walks of the list that evacuate (release,
	                                  destroy) against a block's removal */
	struct uhmm_devmem *mems;
	bool dying;                    /* under lock: destruction evacuates; no growth */
	size_t capacity;               /* grow on demand up to this (0 = no growth) */
	bool coherent;                 /* migrations to it map coherent granules */
	size_t grow_chunk;
	unsigned grow_flags;
	_Atomic unsigned fail;         /* fault injection (UHMM_DUMMY_FAIL_*) */
	_Atomic(struct uhmm_mirror *) mirror;
	void *backend;                 /* the dummy device's state */
	bool sim_memory;               /* blocks get `sim` memory: a simulated copy device
	                                  (set before its first block) */
	void (*backend_destroy)(struct uhmm_device *d);
};

int device_lose(struct uhmm_device *d);

/* ------------------------------------------------------------------------
 * Registry of managed ranges (range.c), process wide, EBR-published.
 * ---------------------------------------------------------------------- */
struct range_ent {
	uintptr_t start, end;
	struct uhmm *h;
	bool dying; /* range_remove in progress: no migration to a device */
	bool pool;  /* a HOST_BACKED device pool registered with h's uffd, not managed memory */
	bool persist;              /* a uhmm_devmem_map mapping of persistent memory */
	struct uhmm_devmem *mem;   /* persist: its block */
};
/* Managed memory of h (not a pool) at addr?  Call inside ebr_enter/exit. */
static inline bool range_lookup_managed(struct uhmm *h, uintptr_t addr, struct range_ent *r);
/* Bumped by every change of the registry (SIGBUS handler: a fault raised
 * before its range was removed is retried, not failed). */
extern _Atomic uint64_t g_registry_gen;
/* Find the range holding addr; call inside ebr_enter/exit. */
bool range_lookup(uintptr_t addr, struct range_ent *out);
/* Is [start, end) entirely managed by h (several adjacent ranges allowed)? */
bool range_covered(struct uhmm *h, uintptr_t start, uintptr_t end, bool allow_dying);
/* The event thread's view: drop / move intervals after unmap or mremap. */
void range_forget(struct uhmm *h, uintptr_t start, uintptr_t end);
void range_move(struct uhmm *h, uintptr_t from, uintptr_t to, size_t len, bool keep_old);
/* Copy out h's intervals (malloc'ed array); returns count or -ENOMEM. */
long range_list(struct uhmm *h, struct range_ent **out);
/* Is the mapping at addr registered with a userfaultfd (smaps VmFlags)? */
bool vma_registered(uintptr_t addr);
struct vma_info;
int range_remove_locked_all(struct uhmm *h);
/* Growth (mremap grew a registered mapping, range.c): add the parts of the
 * registered VMAs over [start, end) that hold a range of h and that no
 * range holds; returns how many intervals were added. */
int range_discover(struct uhmm *h, uintptr_t start, uintptr_t end);
bool range_lookup_below(uintptr_t addr, struct range_ent *out);
bool range_grow_request(struct uhmm *h, uintptr_t addr); /* signal-safe; waits */
bool range_grow_serve(struct uhmm *h); /* true: deferred, serve again soon */                    /* service thread */
void range_grow_span(struct uhmm *h, uintptr_t start, uintptr_t end);
/* Forget entries of [start, end) without waiting for a holder (events.c). */
void range_reset_nowait(struct uhmm *h, uintptr_t start, uintptr_t end);
int pool_register(struct uhmm *h, uintptr_t start, uintptr_t end);
/* Forget what the table says about [start, end) (device pages freed). */
int range_reset_entries(struct uhmm *h, uintptr_t start, uintptr_t end);
void registry_reset_child(void); /* after fork, in the child: the parent's ranges are not ours */
void pool_forget(struct uhmm *h, uintptr_t start, uintptr_t end);
static inline bool range_lookup_managed(struct uhmm *h, uintptr_t addr, struct range_ent *r)
{
	return range_lookup(addr, r) && r->h == h && !r->pool && !r->persist;
}
/* Like range_covered, also accepting persistent mappings of h's devices. */
bool range_covered_any(struct uhmm *h, uintptr_t start, uintptr_t end);
/* Does any range of h overlap [start, end)? */
int persist_register(struct uhmm_devmem *m, uintptr_t start, uintptr_t end);
void persist_forget(struct uhmm *h, uintptr_t start, uintptr_t end);
void persist_forget_mem(struct uhmm_devmem *m);

/* ------------------------------------------------------------------------
 * userfaultfd wrappers (uffd.c).  All return 0 or -errno; partial results
 * are reported through the out parameters.
 * ---------------------------------------------------------------------- */
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1ULL << 16)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1ULL << 14)
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1ULL << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

struct uffd_probe {
	int fd;
	int err;         /* errno if fd < 0 */
	bool kernel_faults;
	bool via_dev;
	uint64_t features;
	char how[96];
};
/* Open a userfaultfd, trying full (kernel faults) access first. */
void uffd_open_best(struct uffd_probe *p, int flags);
int uffd_api(int fd, uint64_t want, uint64_t *got);
int uffd_register(int fd, uintptr_t start, size_t len, bool wp, uint64_t *ioctls);
int uffd_register_wp_only(int fd, uintptr_t start, size_t len);
int uffd_unregister(int fd, uintptr_t start, size_t len);
int uffd_zeropage(int fd, uintptr_t dst, size_t len, size_t *done);
int uffd_copy(int fd, uintptr_t dst, const void *src, size_t len, bool wp, size_t *done);
int uffd_move(int fd, uintptr_t dst, uintptr_t src, size_t len, size_t *done);
int uffd_wp(int fd, uintptr_t start, size_t len, bool protect);
bool uffd_events_pending(int fd, uintptr_t probe);
int uffd_wake(int fd, uintptr_t start, size_t len);
int uffd_poison(int fd, uintptr_t start, size_t len);
/* Mark the calling thread as a service thread: userfaultfd calls return
 * -EAGAIN instead of waiting for an unread event. */
void uffd_set_service_thread(void);
/* The same for the calling thread while it is in a gate section. */
void uffd_nowait(bool on);
/* Wake threads blocked on [start, start+len) (THREAD mode; no-op otherwise). */
void wake_range(struct uhmm *h, uintptr_t start, size_t len);

/* ------------------------------------------------------------------------
 * /proc/self access (procmem.c): reads and writes that fail instead of
 * faulting, and the process's mappings.
 * ---------------------------------------------------------------------- */
int procmem_fd(void);
/* Returns bytes transferred (short at the first inaccessible page) or -errno. */
ssize_t procmem_read(void *dst, uintptr_t src, size_t len);
ssize_t procmem_write(uintptr_t dst, const void *src, size_t len);

struct vma_info { uintptr_t start, end; int prot; bool shared, anon; };
/* Fill up to max VMAs overlapping [start, end); returns count or -errno. */
int maps_query(uintptr_t start, uintptr_t end, struct vma_info *out, int max);
/* PROT_* of the page at addr, or -1 if unmapped; uses a cached parse. */
struct prot_cache { uintptr_t start, end; int prot; struct vma_info v[16]; int n; uintptr_t qs, qe; };
void prot_cache_init(struct prot_cache *c, uintptr_t start, uintptr_t end);
int prot_at(struct prot_cache *c, uintptr_t addr);
/* The cached VMA holding addr, or NULL if unmapped. */
const struct vma_info *vma_at(struct prot_cache *c, uintptr_t addr);
/* Raw /proc/self/pagemap entries of n pages from addr; 0 or -EIO. */
#define PM_PRESENT   (1ULL << 63)
#define PM_FILE      (1ULL << 61) /* a page-cache page (file or shared anonymous) */
#define PM_EXCLUSIVE (1ULL << 56) /* mapped by this page table only */
int pagemap_read(uintptr_t addr, size_t n, uint64_t *out);
/* Is the page mapped with the shared zero page?  (pagemap; -1 unknown) */
int page_is_zero(uintptr_t addr);
/* Which of n pages from addr are present (pagemap); 0 or -EIO. */
int pages_present(uintptr_t addr, size_t n, bool *present);

/* ------------------------------------------------------------------------
 * Context (context.c).
 * ---------------------------------------------------------------------- */
enum {
	ST_CPU_FAULTS, ST_TO_DEVICE, ST_TO_SYSTEM, ST_DEVICE_FAULTS, ST_INVALIDATIONS,
	ST_SKIPPED, ST_ZERO_FILLED, ST_MOVE_CALLS, ST_COPY_CALLS, ST_FALLBACK,
	ST_DEFERRED, ST_EVENTS, ST_POISONED, ST_AHEAD, ST_STAGED, ST_UNSHARED, ST__COUNT
};

/* A faulting thread's sequential stream: where its last granule ended. */
#define RA_SLOTS 16
struct ra_state {
	struct uhmm *h;
	uint32_t tid;
	unsigned pages;
	uintptr_t next;
	uintptr_t ahead;   /* end of what fault-ahead was asked to bring home */
};

/* Fault-ahead (ahead.c, which states the rules). */
#define AHEAD_SLOTS       32
#define AHEAD_MAX_WORKERS 4
#define AHEAD_MAX         16 /* granules a stream may have queued ahead */
struct ahead_req {
	_Atomic unsigned state;
	uintptr_t start, end;
	uint64_t epoch;
};
struct ahead {
	unsigned granules;           /* option: 2 MiB granules ahead of a stream (0: off) */
	unsigned nworkers;
	pthread_t tid[AHEAD_MAX_WORKERS];
	_Atomic uint32_t seq;        /* futex word: bumped per request and at stop */
	_Atomic bool stop;
	_Atomic uint64_t epoch;      /* bumped by every migration to a device */
	struct ahead_req req[AHEAD_SLOTS];
};

#define GROW_SLOTS 8

struct staging {
	_Atomic uint64_t busy;   /* bit i: buf i in use */
	char *buf[8];
};

/* The move-staging area (stage.c): slots of one batch each. */
#define STAGE_SLOTS 8
struct stage {
	char *_Atomic base;          /* STAGE_SLOTS batches, registered; NULL: none */
	_Atomic uint64_t busy;       /* bit i: slot i claimed or being emptied (else empty) */
	_Atomic uint64_t lost;       /* bit i: slot i could not be emptied: busy for good */
	pthread_mutex_t init_lock;
	/* The cleaner thread empties the slots given back (under mu). */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint64_t dirty;              /* bit i: slot i given back, to be emptied */
	size_t dirty_pages[STAGE_SLOTS]; /* how many of its first pages may hold data */
	bool stop, cleaner_running;
	pthread_t cleaner;
};

struct uhmm {
	int uffd;
	uint64_t features;
	bool kernel_faults;
	bool use_move;            /* UFFDIO_MOVE available and allowed */
	bool use_wp;              /* WP registration available */
	bool have_poison;
	enum uhmm_fault_mode mode;
	unsigned fault_around;    /* pages, power of two */
	struct ra_state ra_tab[RA_SLOTS]; /* THREAD mode stream hints, by faulting thread */
	unsigned spin_us;
	pid_t pid;

	struct ptable pt;

	pthread_t service;
	bool service_running;
	int wake_fd;              /* eventfd: stop / page unlocked */
	uintptr_t probe;          /* a page never registered: uffd_events_pending (0: none) */
	unsigned svc_unhandled;   /* service thread only: UNMAP/REMAP read, not handled yet */
	_Atomic bool stopping;
	_Atomic long waiting;     /* deferred faults in the service thread */
	_Atomic uint64_t svc_seq; /* odd while the service thread handles a batch */
	_Atomic unsigned gate;    /* open sections, | GATE_SVC (gate.c) */
	_Atomic unsigned gate_waiters;

	pthread_mutex_t dev_lock;
	struct uhmm_device *_Atomic devices[MAX_DEVICES];

	pthread_rwlock_t fork_lock;     /* shared: migrations to a device; exclusive: fork */
	pthread_mutex_t selfremove_lock; /* our own MADV_DONTNEED (copy fallback) */
	/* The change in progress (self_change_begin), under selfremove_mu,
	 * which nobody holds while waiting for anything: its interval, the
	 * pages whose own event has not been seen yet, and whether it raises
	 * UNMAP events too (a coherent granule's remapping). */
	pthread_mutex_t selfremove_mu;
	uintptr_t selfremove_start, selfremove_end;
	uint64_t selfremove_due[BATCH_PAGES / 64];
	uint64_t selfremove_again[BATCH_PAGES / 64]; /* one more event due (a hole) */
	bool selfremove_unmap;

	struct staging staging;
	struct stage stage;
	struct ahead ahead;
	/* Growth discovery requests for the service thread (range.c). */
	pthread_mutex_t grow_mu;
	unsigned grow_n;
	uintptr_t grow_addr[GROW_SLOTS];
	_Atomic uint64_t grow_req, grow_done;
	pthread_mutex_t remap_lock;     /* pending moves of busy entries (mremap) */
	struct remap_pending *remaps;
	pthread_mutex_t owed_lock;      /* UNMAP events still due, per address (owed.c) */
	struct owed_set *owed;
	/* Event order (service.c): REMAPs that waited for an explanation and
	 * got it / ran out of time; counts dropped as stale (owed_settle). */
	_Atomic uint64_t order_explained, order_timeouts, owed_cleared;
	/* The counters: in the live-status segment when there is one (the
	 * same adds, where `uhmm top` reads them), else stats_local. */
	_Atomic uint64_t *stats;
	_Atomic uint64_t stats_local[ST__COUNT];
	struct uhmm_status *status;     /* status.c; NULL: none */
	char status_name[64];
	pthread_t status_tid;
	bool status_running;
	_Atomic bool status_stop;
	struct uhmm *next_ctx;
};

static inline void stat_add(struct uhmm *h, int i, uint64_t n)
{
	atomic_fetch_add_explicit(&h->stats[i], n, memory_order_relaxed);
}

/* The live-status segment (status.c, status.h).  status_open sets
 * h->stats (always); status_close before the page table and devices go. */
struct uhmm_options;
void status_open(struct uhmm *h, const struct uhmm_options *o);
void status_close(struct uhmm *h);

/* Staging buffers of BATCH_PAGES pages (signal-safe). */
char *staging_get(struct uhmm *h, int *slot);

/* ahead.c */
struct mpage;
int ahead_start(struct uhmm *h, unsigned granules);
void ahead_stop(struct uhmm *h);
bool ahead_queue(struct uhmm *h, uintptr_t start, uintptr_t end); /* async-signal-safe */
void ahead_cancel(struct uhmm *h);
/* migrate.c: bring device pages of [a, end) home for fault-ahead, giving up
 * a window when h->ahead.epoch moved past `epoch`; pages brought home. */
size_t migrate_home_ahead(struct uhmm *h, uintptr_t a, uintptr_t end, uint64_t epoch,
                          struct mpage *p);
void staging_put(struct uhmm *h, char *buf, int slot);
/* stage.c: the move-staging area of migrations to copy devices. */
int stage_init(struct uhmm *h);
void stage_stop(struct uhmm *h); /* before the service thread stops */
void stage_destroy(struct uhmm *h);
char *stage_get(struct uhmm *h, int *slot);
void stage_put(struct uhmm *h, int slot, size_t pages);
void stage_drain(struct uhmm *h);

/* ------------------------------------------------------------------------
 * Migration (migrate.c).  Callers hold the page locks of every page.
 * ---------------------------------------------------------------------- */
struct mpage {
	uintptr_t addr;
	_Atomic uint64_t *e;
	uint64_t old;             /* entry value when locked (BUSY clear) */
	uint64_t new;             /* value to publish at unlock */
	struct uhmm_dpage *dp;    /* destination (to device) or source (to system) */
	int err;                  /* 0 = moved */
	bool copied;              /* came home by copy: its pool slot still holds data */
	bool poison;              /* its data is lost: published POISONED */
	bool staged;              /* taken into the staging slot, to be copied */
};
/* Bring device pages back to system memory (pages[i].old is DEVICE). */
void migrate_to_system(struct uhmm *h, struct mpage *p, size_t n, const struct uhmm_device *initiator);
/* Move system pages into d (pages[i].old is SYSTEM). */
/* stage: a claimed staging slot (stage.c) for a copy device, else NULL;
 * unshare: pages shared with a fork child get -EXDEV (unshare, retry). */
void migrate_to_device(struct uhmm *h, struct mpage *p, size_t n, char *stage, bool unshare);
/* In a gate section: unlock the pages an event marked since they were
 * locked; returns how many are kept. */
size_t mpages_recheck(struct uhmm *h, struct mpage *p, size_t n, size_t *dropped);
/* Unlock with the computed value, applying a pending DISCARD. */
void mpage_unlock(struct uhmm *h, struct mpage *p);
void page_unlock(struct uhmm *h, _Atomic uint64_t *e, uint64_t newval);
/* Bring every device-resident page of h in [start, end) home; -EBUSY if some stayed. */
int migrate_range_home(struct uhmm *h, uintptr_t start, uintptr_t end, struct uhmm_device *only);
/* Bring back one device page given its descriptor (devmem evacuation). */
int migrate_dpage_home(struct uhmm *h, struct uhmm_dpage *dp);
/* uhmm_migrate to a device, into its private (unaddressable) blocks only,
 * even if it also has coherent memory: coherent granules of the range come
 * home first (the dummy device's exclusive access on coherent memory). */
int migrate_private(struct uhmm *h, void *addr, size_t len, struct uhmm_device *to,
                    struct uhmm_migrate_result *res);
/* Coherent memory (coherent.c): whole 2 MiB granules. */
int coherent_to_device(struct uhmm *h, uintptr_t g, struct uhmm_device *d);
int coherent_home(struct uhmm *h, uintptr_t g);
/* Our own mapping changes: the UNMAP/REMOVE events they raise are ignored. */
void self_change_begin(struct uhmm *h, uintptr_t start, size_t len, bool unmap);
void self_change_end(struct uhmm *h);
/* Service thread: which pages of an event over [start, end) are our own
 * change's; returns the base of own[] (bit i: page base + i) or 0. */
uintptr_t self_change_claim(struct uhmm *h, uintptr_t start, uintptr_t end, bool unmap,
                            uint64_t own[BATCH_PAGES / 64]);
/* Service thread: [start, end) was unmapped or moved away (self_change_begin). */
void self_change_hole(struct uhmm *h, uintptr_t start, uintptr_t end);
/* Zero-fill (read: zero page, write: fresh page) a run of NONE pages. */
int populate_zero(struct uhmm *h, uintptr_t addr, size_t n, bool write, size_t *done);

/* ------------------------------------------------------------------------
 * Faults (fault.c, service.c, sigbus.c).
 * ---------------------------------------------------------------------- */
#define FAULT_WRITE   (1u << 0)
#define FAULT_SERVICE (1u << 1) /* on the service thread: never sleep on a page lock */
#define FAULT_DRAINED (1u << 2) /* the queue held no event when this was retried */
/* 0 resolved; -EAGAIN busy (retry later); -EFAULT the access must get SIGBUS.
 * tid: the faulting thread on the service thread, 0 in that thread itself. */
int fault_resolve(struct uhmm *h, const struct range_ent *r, uintptr_t addr, unsigned flags,
                  uint32_t tid);
extern _Atomic long g_svc_busy;
int service_start(struct uhmm *h);
void service_stop(struct uhmm *h);
void service_kick(struct uhmm *h);
/* munmap, madvise and mremap return once the service thread has *read*
 * their event; wait until it has handled what it read, and what another
 * thread's change made before the call, so a call that follows them sees
 * their effect.  Cheap when idle (one load, one ioctl). */
void service_quiesce(struct uhmm *h);
/* The identity gate (gate.c): see there for the rule.  gate_enter returns
 * whether it entered; pass that to gate_exit. */
bool gate_enter(struct uhmm *h);
bool gate_held(void); /* the calling thread is in a gate section */
void gate_exit(struct uhmm *h, bool entered);
void gate_close(struct uhmm *h); /* service thread: before reading */
void gate_open(struct uhmm *h);  /* service thread: batch handled */
void gate_set_service_thread(void);
/* Leave the calling thread's section for a while (to wait for the service
 * thread), and come back: re-check what an event may have changed. */
unsigned gate_pause(struct uhmm *h);
void gate_resume(struct uhmm *h, unsigned depth);
/* Out of a section, after an EAGAIN: wait until the service thread has read
 * and handled what is queued now. */
void gate_wait_service(struct uhmm *h);
int sigbus_install(void);  /* make sure ours is first in line */
int sigbus_acquire(void);  /* a SIGBUS-mode context starts */
void sigbus_track_fd(int fd, bool on);
void sigbus_release(void);

/* ------------------------------------------------------------------------
 * Mirrors (mirror.c).
 * ---------------------------------------------------------------------- */
struct uhmm_mirror {
	struct uhmm_device *dev;
	struct uhmm_mirror_ops ops;
	void *priv;
	_Atomic uint64_t seq;
};
/* Tell every mirror of h (except skip's) that [start, end) changes. */
void mirror_invalidate(struct uhmm *h, uintptr_t start, uintptr_t end, enum uhmm_event ev,
                       const struct uhmm_device *skip);

/* Events from the kernel (service.c → context state). */
void discard_range(struct uhmm *h, uintptr_t start, uintptr_t end, enum uhmm_event ev);
/* still: the old range stays (MREMAP_DONTUNMAP), no UNMAP of it follows. */
void remap_range(struct uhmm *h, uintptr_t from, uintptr_t to, size_t len, bool still);
bool remap_source_registered(struct uhmm *h, uintptr_t from, size_t len);
/* page_unlock of an entry marked PTE_REMAP: move value to its new address. */
void remap_finish(struct uhmm *h, _Atomic uint64_t *e, uint64_t value);
/* page_unlock of an entry marked PTE_REMAP or PTE_INSTALL (events.c). */
bool remap_release(struct uhmm *h, _Atomic uint64_t *e, uint64_t *cur);
void unmap_range(struct uhmm *h, uintptr_t start, uintptr_t end);
/* *discarded (may be NULL): the page was discarded on the way. */
bool remap_dest(struct uhmm *h, _Atomic uint64_t *e, uintptr_t *to, bool *discarded);
bool remap_incoming(struct uhmm *h, _Atomic uint64_t *ne, uint64_t *v);

/* UNMAP events due at addresses another mapping holds now (owed.c). */
void owed_add(struct uhmm *h, uintptr_t start, uintptr_t end);
/* The first part of [at, end) with a count: one taken from it, true. */
bool owed_take_next(struct uhmm *h, uintptr_t at, uintptr_t end, uintptr_t *ps, uintptr_t *pe);
size_t owed_query(struct uhmm *h, uintptr_t addr);
bool owed_any(struct uhmm *h);
/* No UNMAP can be due (none made and unread): drop what is counted. */
void owed_settle(struct uhmm *h);
void owed_destroy(struct uhmm *h);
/* The parts of [start, end) that h's ranges hold (not pools, not dying):
 * count them owed (range.c). */
void range_owed_occupied(struct uhmm *h, uintptr_t start, uintptr_t end);
/* The parts of [start, end) h's ranges hold (as above); up to max. */
struct vma_info;
int range_held_parts(struct uhmm *h, uintptr_t start, uintptr_t end, struct vma_info *out, int max);
/* Tests only: the service thread holds back the next debug_hold_count
 * UNMAP/REMAP events from debug_hold_addr until debug_hold_after more
 * messages are read (service.c). */
extern _Atomic uintptr_t debug_hold_addr;
extern _Atomic unsigned debug_hold_count, debug_hold_after, debug_hold_unmap_only;
#define DEBUG_HOLD_UNTIL_WAIT 0xffffffffu

/* Tests only (tests/stress/remap.c, stage.c; delay.c has the rule of interleaving
 * points): called at the points below with the
 * pages concerned, so that a test can make other threads act exactly
 * there.  NULL outside such tests: one relaxed load each. */
enum {
	DEBUG_FALLBACK_BEFORE_DISCARD, /* copy fallback, out of the gate, page locks held */
	DEBUG_FALLBACK_AFTER_DISCARD,
	DEBUG_STAGE_BEFORE_COPY,       /* staged pages (first, count), out of the gate, locked */
};
extern void (*_Atomic debug_hook)(int point, uintptr_t addr, size_t len);
#define DEBUG_HOOK(point, addr, len)                                                       \
	do {                                                                               \
		void (*hook_)(int, uintptr_t, size_t) =                                    \
			atomic_load_explicit(&debug_hook, memory_order_relaxed);          \
		if (__builtin_expect(hook_ != NULL, 0))                                    \
			hook_((point), (addr), (len));                                     \
	} while (0)

/* Contexts of this process (for fork handling). */
void contexts_lock(void);
void contexts_unlock(void);

/* ------------------------------------------------------------------------
 * Page trace (pagetrace.c): built only with -Dtrace=true (UHMM_TRACE);
 * otherwise PTRACE() is empty (the run-time ring is trace.c, TRACE()).  A ring of recent page-level events, dumped per page.
 * ---------------------------------------------------------------------- */
#define PTRACE_OPS(X)                                                             \
	X(LOCK) X(TRYLOCK) X(UNLOCK) X(MARK) X(EV_REMOVE) X(EV_UNMAP) X(EV_REMAP)   \
	X(UNMAP_PART) X(DISCARD) X(REMAP_FINISH) X(REMAP_TAKE) X(REMAP_MOVE)         \
	X(UFFD_MOVE) X(UFFD_COPY) X(UFFD_ZERO) X(UFFD_WP) X(UFFD_REG) X(UFFD_UNREG)  \
	X(PROCMEM_READ) X(SELF_DISCARD) X(REG_EDIT) X(REG_INSERT) X(FAULT)           \
	X(FAULT_SVC) X(MIG_DEV) X(MIG_SYS) X(RECHECK_DROP) X(DEV_ACCESS)             \
	X(MAKE_PRESENT) X(RESET) X(OWED)                                             \
	X(APP_CPU_WRITE) X(APP_DEV_WRITE) X(APP_MADVISE) X(APP_MUNMAP) X(APP_MREMAP) \
	X(APP_ALLOC) X(APP_FREE) X(APP_RANGE_ADD) X(APP_RANGE_REMOVE) X(APP_CHECK)   \
	X(APP_FORK) X(APP_MIGRATE) X(APP_FOREIGN) X(APP_FAIL)
enum {
#define X(n) PT_##n,
	PTRACE_OPS(X)
#undef X
	PT__N
};
#ifdef UHMM_TRACE
void ptrace_rec(unsigned op, uintptr_t e, uintptr_t a, uint64_t len, uint64_t x, uint64_t y);
void uhmm_trace_note(unsigned op, const void *addr, size_t len, uint64_t x, uint64_t y);
void uhmm_trace_dump(struct uhmm *h, const void *addr);
void ptrace_anomaly(uintptr_t addr); /* dumped too */
#define PTRACE_ANOMALY(a) ptrace_anomaly((uintptr_t)(a))
#define PTRACE(op, e, a, len, x, y)                                                  \
	ptrace_rec(PT_##op, (uintptr_t)(e), (uintptr_t)(a), (uint64_t)(len), (uint64_t)(x), \
	          (uint64_t)(y))
#else
#define PTRACE(op, e, a, len, x, y) ((void)0)
#define PTRACE_ANOMALY(a) ((void)0)
#endif

static inline bool aligned(uintptr_t x) { return (x & PAGE_MASK) == 0; }
/* Validate (addr, len): aligned, non-zero, no wrap. */
static inline int check_span(const void *addr, size_t len)
{
	uintptr_t a = (uintptr_t)addr;
	if (!addr || len == 0 || !aligned(a) || !aligned(len) || a + len < a)
		return -EINVAL;
	return 0;
}

#endif
