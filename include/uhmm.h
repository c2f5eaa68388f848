/* SPDX-License-Identifier: MIT */
/*
 * uhmm — Heterogeneous Memory Management in user space.
 *
 * A device (GPU, accelerator, simulator, memory tier) shares the process's
 * address space: pages of "managed" memory can be migrated into device
 * memory, a CPU touch of a page that lives in device memory the CPU cannot
 * address faults it back, and device page tables ("mirrors") are told about
 * every CPU-side change before it becomes visible.  Everything runs in user
 * space on userfaultfd(2); no kernel module, no root (see "Limits" in
 * README.md).
 *
 * Conventions of this header:
 *  - Every call returns 0 (or a documented non-negative value) on success
 *    and a negative errno on failure.  No call aborts or prints on bad
 *    input.
 *  - Addresses and lengths are page aligned (sysconf(_SC_PAGESIZE)); an
 *    unaligned value, a zero length or an `addr + len` that wraps is
 *    -EINVAL (never rounded).
 *  - Unless a comment says otherwise, calls on one context are safe to make
 *    from several threads at once, and may race CPU faults, migrations and
 *    unmaps of the same memory: data is never lost.
 *
 * How the ABI evolves (a binary built against an older header keeps
 * working with a newer library, and one built against a newer header gets
 * -EINVAL, not silent misbehaviour, from an older library when it asks for
 * more than that library knows):
 *  - Structs the caller allocates and passes in or out whole (uhmm_options,
 *    uhmm_stats, uhmm_sysinfo, uhmm_dummy_options, and in uhmm_cuda.h
 *    uhmm_cuda_options, uhmm_cuda_info, uhmm_cuda_stats, uhmm_cuda_launch)
 *    start with `size_t sz`, which the caller sets to sizeof(the struct)
 *    as its header declares it: use UHMM_OPTS(type, name, fields...), the
 *    type's UHMM_*_INIT initializer, or memset the struct to zero and set
 *    sz (a struct on the stack whose members are assigned one by one holds
 *    garbage in the members it does not assign).
 *  - Fields are only ever appended, never reordered, resized or removed.
 *  - No such struct has tail padding, and no padding past its first
 *    version's end: where alignment would leave some, a `reserved` member
 *    holds its place (0 in inputs, else -EINVAL; written as 0 in outputs),
 *    so a struct filled by any initializer has no stray byte where a later
 *    version's field will be.
 *  - The library checks sz: smaller than the struct's first version, or
 *    larger than UHMM_SZ_MAX, is -EINVAL; larger than the library knows is
 *    accepted only when every byte past the fields it knows is zero (a
 *    newer caller asking for nothing new), else -EINVAL.  An input field
 *    past the caller's sz reads as 0 (its default); an output struct gets
 *    only the first min(sz, what the library knows) bytes written, so
 *    fields the caller knows and the library does not keep their zeros.
 *  - A NULL options pointer still means "all defaults".
 *  - Arrays of per-page entries (uhmm_page_info, uhmm_range_entry),
 *    uhmm_migrate_result, uhmm_dummy_counters, uhmm_cuda_device_info,
 *    uhmm_cuda_span and the callback tables (uhmm_device_ops,
 *    uhmm_mirror_ops) keep their layout for good; anything new they need
 *    comes as a new call (a new version node).
 *  - Exported symbols carry versions (src/uhmm.map): a release that adds
 *    calls adds a new version node inheriting the previous one, and a
 *    symbol's meaning never changes under its version.
 */
#ifndef UHMM_H
#define UHMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UHMM_VERSION_MAJOR 0
#define UHMM_VERSION_MINOR 1
#define UHMM_VERSION_PATCH 0

struct uhmm;
struct uhmm_device;
struct uhmm_devmem;
struct uhmm_mirror;

/* Largest sz any sized struct accepts (a bound on the zero-tail check). */
#define UHMM_SZ_MAX 4096u

/*
 * Declare and initialise a sized struct, libbpf style:
 *     UHMM_OPTS(uhmm_options, o, .fault_mode = UHMM_FAULT_SIGBUS);
 *     uhmm_open(&o, &h);
 * Members not named are zero (their defaults).  UHMM_OPTS_INIT(type, ...)
 * is the initializer alone, for a declaration of one's own.
 */
#define UHMM_OPTS_INIT(type, ...) { .sz = sizeof(struct type), __VA_ARGS__ }
#define UHMM_OPTS(type, name, ...) struct type name = UHMM_OPTS_INIT(type, __VA_ARGS__)

/* ------------------------------------------------------------------------
 * Context: one per address-space user.
 * ---------------------------------------------------------------------- */

/*
 * How CPU faults on managed memory are served.
 *  THREAD: a service thread reads userfaultfd messages.  Faults taken
 *          inside system calls (read(2) into a device-resident buffer) are
 *          served too where the kernel lets this process handle kernel-mode
 *          faults (root, CAP_SYS_PTRACE, /dev/userfaultfd access or
 *          vm.unprivileged_userfaultfd=1).
 *  SIGBUS: UFFD_FEATURE_SIGBUS; the faulting thread resolves its own fault
 *          in a SIGBUS handler (no cross-thread wake-up, several times
 *          faster on VMs).  A system call touching a device-resident page
 *          fails with EFAULT instead, and so does one touching a managed
 *          page never populated (read(2) into a fresh buffer: touch it
 *          first); also in THREAD mode where kernel-mode faults cannot be
 *          served.  Handlers the application installed
 *          for SIGBUS are chained to for addresses uhmm does not manage.
 *  AUTO:   THREAD where kernel-mode faults can be served (so I/O on managed
 *          memory keeps working), else SIGBUS.  Environment: UHMM_FAULT_MODE
 *          = auto | thread | sigbus overrides a zero-initialised option.
 */
enum uhmm_fault_mode { UHMM_FAULT_AUTO = 0, UHMM_FAULT_THREAD, UHMM_FAULT_SIGBUS };

/* Flags for uhmm_options.flags. */
#define UHMM_OPT_NO_MOVE (1u << 0) /* never use UFFDIO_MOVE: copy + unmap fallback (env UHMM_NO_MOVE=1) */
/* Publish no live-status segment (/dev/shm/uhmm.<pid>.<n>, read by
 * `uhmm stat` and `uhmm top`; env UHMM_NO_STATUS=1).  The segment, mode
 * 0600, holds the context's counters, and on a reader's request its
 * devices and the pages per state of each range; it is removed by
 * uhmm_close.  Without it (also where shm_open fails) nothing else changes. */
#define UHMM_OPT_NO_STATUS (1u << 1)

struct uhmm_options {
	size_t sz;                       /* sizeof(struct uhmm_options) (see the top of this header) */
	enum uhmm_fault_mode fault_mode; /* AUTO picks the fastest that works here */
	unsigned fault_around;           /* pages resolved per CPU fault; 0 = default (16), 1 = off;
	                                    rounded down to a power of two, at most 512
	                                    (env UHMM_FAULT_AROUND) */
	unsigned flags;                  /* UHMM_OPT_* */
	unsigned spin_us;                /* THREAD mode: how long the service thread keeps polling
	                                    after a fault before it sleeps; 0 = default (50),
	                                    (env UHMM_SPIN_US; a value of 1 means "do not spin") */
	unsigned fault_ahead;            /* fault-ahead: once a CPU thread reads device-resident
	                                    memory sequentially (its fault-around granule has
	                                    grown to 2 MiB), worker threads bring the next
	                                    fault_ahead 2 MiB granules home in the background.
	                                    0 = off (default; env UHMM_FAULT_AHEAD), at most 16;
	                                    min(fault_ahead, 4) worker threads.  A migration to a
	                                    device cancels what was queued before it started. */
	unsigned reserved;               /* 0 (holds the tail padding's place: see the top) */
	/* new fields go here, at the end */
};
#define UHMM_OPTIONS_INIT { .sz = sizeof(struct uhmm_options) }

/*
 * Create a context: a userfaultfd, its service thread and an empty set of
 * managed ranges.  opts may be NULL (defaults, overridden by UHMM_* env).
 * Fails: -EINVAL bad options (opts->sz among them) or out == NULL; -ENOSYS / -EPERM userfaultfd is
 * not available here (uhmm_sysinfo_get's reason says why, as `uhmm info`
 * does); -EOPNOTSUPP the system page size is not the one uhmm was built
 * for, or SIGBUS mode asked for where the kernel lacks UFFD_FEATURE_SIGBUS;
 * -EAGAIN the service thread or a fault-ahead worker could not be started;
 * -EMFILE / -ENFILE out of file descriptors;
 * -ENOMEM; another negative errno of the UFFDIO_API handshake (-EINVAL on
 * a kernel too old for uhmm).
 */
int uhmm_open(const struct uhmm_options *opts, struct uhmm **out);

/*
 * Destroy a context: every device-resident page comes back to system
 * memory, devices still registered are destroyed, ranges are unregistered
 * and stay mapped as ordinary memory.  No other thread may call uhmm with h
 * during or after the call, but other threads may go on touching the
 * managed memory itself while it runs, in either fault mode: pages come
 * home before faults stop being served, and a CPU fault that arrives
 * meanwhile is still served (its access is retried once the range is
 * ordinary memory).  In SIGBUS mode the last close puts back the SIGBUS
 * handler that was installed before uhmm_open, once no thread has a SIGBUS
 * of uhmm's still pending.  Fails: -EINVAL h == NULL; -ECHILD in a forked
 * child; -EBUSY a device-resident page could not come home (the context
 * stays open and usable; devices destroyed before that one stay destroyed);
 * -ENOMEM listing the ranges or bringing their pages home ran out of
 * memory (the context stays open, as for -EBUSY).
 */
int uhmm_close(struct uhmm *h);

/* The fault mode context h actually uses: THREAD or SIGBUS, never AUTO;
 * AUTO only when h is NULL (there is no context to ask). */
enum uhmm_fault_mode uhmm_fault_mode(const struct uhmm *h);

/* ------------------------------------------------------------------------
 * Managed memory: page-aligned private anonymous memory.
 * ---------------------------------------------------------------------- */

/*
 * Map len bytes of read/write managed memory (like mmap MAP_PRIVATE |
 * MAP_ANONYMOUS | MAP_NORESERVE: nothing is committed until touched).
 * Fails: -EINVAL bad length or NULL out, or the kernel refused to register
 * the new mapping with userfaultfd (UFFDIO_REGISTER); -EEXIST uhmm's
 * registry still holds a stale range where the kernel placed the mapping
 * (memory unmapped outside uhmm whose unmap event is not yet handled);
 * -ENOMEM.
 */
int uhmm_alloc(struct uhmm *h, size_t len, void **out);

/*
 * Unmap memory from uhmm_alloc (or any managed memory): device pages that
 * backed it are freed.  [addr, addr+len) must be entirely managed by h.
 * Fails: -EINVAL bad arguments or not entirely managed.
 */
int uhmm_free(struct uhmm *h, void *addr, size_t len);

/*
 * Adopt existing private anonymous memory (contents kept).  Managed memory
 * follows mremap: moved, its pages and states go with it; grown (moved or
 * in place, e.g. glibc realloc of a large block), the new part is managed
 * too; shrunk, the cut part is no longer managed.
 * Fails: -EINVAL bad arguments, or the memory is not mapped, not private
 * anonymous (shared, file-backed) — see errno of UFFDIO_REGISTER;
 * -EEXIST overlaps a range managed by any context; -E2BIG the interval
 * spans more than 64 mappings (VMAs: add it in parts); -ENOMEM.
 */
int uhmm_range_add(struct uhmm *h, void *addr, size_t len);

/*
 * Bring every page of [addr, addr+len) back to system memory and stop
 * managing it; the memory stays mapped with its contents.  The interval may
 * be part of a managed range (the rest stays managed).
 * Fails: -EINVAL bad arguments; -ENOENT not entirely managed by h; -EBUSY
 * a device-resident page could not come home, or -ENOMEM out of memory
 * bringing pages home (the interval then stays managed; pages that came
 * home stay in system memory).
 */
int uhmm_range_remove(struct uhmm *h, void *addr, size_t len);

/* ------------------------------------------------------------------------
 * Devices and device memory hotplug: the classification.
 * ---------------------------------------------------------------------- */

#define UHMM_DEVMEM_DEVICE          (1u << 0) /* owned by a device; implied by uhmm_devmem_add */
#define UHMM_DEVMEM_ALLOW_MIGRATION (1u << 1) /* data may migrate in and out */
#define UHMM_DEVMEM_UNADDRESSABLE   (1u << 2) /* the CPU cannot load/store it */

/* Device capabilities (uhmm_device_create flags). */
#define UHMM_DEVICE_HOST_BACKED (1u << 0)
/*
 * HOST_BACKED: the device's memory is host memory that uhmm allocates for
 * each devmem block and that application pointers never point into (the
 * dummy device, a compressed or CPU-side tier).  uhmm moves pages in and out
 * without copying (UFFDIO_MOVE) where the kernel allows; copy_to_device /
 * copy_from_device are not used.  uhmm_devmem_host_addr() gives the device
 * the host address of each of its pages.
 */

/*
 * The backend interface: what a device driver implements.  Device pages are
 * named by (devmem block, page index within the block).
 *
 * copy_to_device / copy_from_device: copy npages between a contiguous host
 * buffer and device pages idx[0..npages) of m.  Return 0 or a negative
 * errno; on failure nothing is considered copied and the pages stay where
 * they were.  Required unless the device is HOST_BACKED.
 *
 * page_free: the page's reference count dropped to zero (its data is no
 * longer needed).  Called exactly once per freed page.  Optional.
 *
 * destroy: the device is being destroyed, after its memory was evacuated.
 * Optional.
 *
 * dma_buf_get / dma_buf_put: optional, both or neither.  A buffer of
 * UHMM_DMA_BUF_BYTES that the device copies to and from fastest (pinned,
 * DMA-able host memory): uhmm reads pages that migrate to the device into
 * it and passes it as copy_to_device's src, and passes it as
 * copy_from_device's dst before installing the pages, so the device copies
 * with no bounce buffer of its own.  get returns NULL when none is free
 * (uhmm then uses a buffer of its own); put gives it back.  Both run where
 * the copy callbacks run, signal handlers included.
 *
 * Callbacks may run on uhmm's service thread or, in SIGBUS mode, inside a
 * signal handler of a thread that touched managed memory: they must not
 * allocate with malloc, and must not take a lock that is ever held while
 * touching managed memory.
 */
struct uhmm_device_ops {
	int (*copy_to_device)(struct uhmm_device *dev, struct uhmm_devmem *m,
	                      const size_t *idx, const void *src, size_t npages);
	int (*copy_from_device)(struct uhmm_device *dev, void *dst, struct uhmm_devmem *m,
	                        const size_t *idx, size_t npages);
	void (*page_free)(struct uhmm_device *dev, struct uhmm_devmem *m, size_t idx);
	void (*destroy)(struct uhmm_device *dev);
	void *(*dma_buf_get)(struct uhmm_device *dev);
	void (*dma_buf_put)(struct uhmm_device *dev, void *buf);
};

/* Size of a dma_buf_get buffer: the most pages one copy callback moves. */
#define UHMM_DMA_BUF_BYTES (2u << 20)

/*
 * Register a device backend with context h.  ops is copied.  name is
 * copied (at most 31 bytes kept).  Fails: -EINVAL NULL arguments, unknown
 * flags, missing copy ops on a device that is not HOST_BACKED, or only one
 * of dma_buf_get / dma_buf_put; -ENOSPC h already has 32 devices (destroy
 * one first); -ENOMEM.
 */
int uhmm_device_create(struct uhmm *h, const char *name, const struct uhmm_device_ops *ops,
                       unsigned flags, void *priv, struct uhmm_device **out);

/*
 * Evacuate every page the device holds to system memory, remove its device
 * memory, unregister its mirror and free it.  Other threads may go on
 * faulting and migrating the device's pages home meanwhile (destruction
 * waits for them), but no call may name d (uhmm_migrate to it, its
 * backend's calls) during or after this one.  Fails: -EINVAL d == NULL;
 * -EBUSY a page could not be brought back (nothing is removed then).
 */
int uhmm_device_destroy(struct uhmm_device *d);

void *uhmm_device_priv(const struct uhmm_device *d);
const char *uhmm_device_name(const struct uhmm_device *d);
struct uhmm *uhmm_device_context(const struct uhmm_device *d);

/*
 * Hot-add size bytes (a multiple of the page size) of device memory with
 * the given classification (UHMM_DEVMEM_DEVICE is ORed in):
 *
 *  DEVICE | ALLOW_MIGRATION | UNADDRESSABLE  private device memory: the CPU
 *      cannot touch it; a CPU access faults the page back to system memory.
 *  DEVICE | ALLOW_MIGRATION  coherent memory (CXL, coherent accelerator
 *      memory): the CPU accesses migrated pages in place, without faults
 *      (state DEVICE_COHERENT); migration back is explicit.  Modelled by a
 *      memory file the device owns, mapped at the migrated addresses in
 *      2 MiB granules (UHMM_COHERENT_GRANULE): only whole, aligned granules
 *      of a managed range migrate here (other pages are skipped), which
 *      bounds the kernel mappings to two per granule (vm.max_map_count,
 *      65530 by default, allows ~64 GiB of granules ever made coherent).
 *      HOST_BACKED devices only; needs userfaultfd write-protect on shmem.
 *  DEVICE  persistent / DAX-like memory: never migrated.  The application
 *      maps it with uhmm_devmem_map; migrations that touch those pages skip
 *      them.  HOST_BACKED devices only.
 *
 * Memory is backed by an anonymous memory file; uhmm_devmem_add_file names
 * a file instead (persistent data then outlives the process).  Coherent
 * memory (DEVICE | ALLOW_MIGRATION) is added in whole granules: size is
 * rounded up to a multiple of UHMM_COHERENT_GRANULE (uhmm_devmem_npages
 * tells the result).
 * Fails: -EINVAL bad size (more than 2^32 pages, too), NULL argument,
 * unknown flag bits, or UNADDRESSABLE without ALLOW_MIGRATION (the data
 * would be unreachable); -EOPNOTSUPP a classification this device or this
 * kernel cannot provide; -EBUSY the device is being destroyed; -ENOMEM;
 * the negative errno of creating or sizing the memory file.
 */
int uhmm_devmem_add(struct uhmm_device *d, size_t size, unsigned flags,
                    struct uhmm_devmem **out);

/*
 * As uhmm_devmem_add for the addressable classes (DEVICE, or DEVICE |
 * ALLOW_MIGRATION) of a HOST_BACKED device, backed by the file at path
 * (created if missing, extended to size; for coherent memory it must be on
 * tmpfs, e.g. /dev/shm).  Fails as uhmm_devmem_add, plus the negative errno
 * of open/ftruncate, -EOPNOTSUPP for private (UNADDRESSABLE) memory.
 */
int uhmm_devmem_add_file(struct uhmm_device *d, const char *path, size_t size, unsigned flags,
                         struct uhmm_devmem **out);

#define UHMM_COHERENT_GRANULE (2u << 20)

/*
 * Map len bytes at offset of persistent (DEVICE-only) memory into the
 * process (shared: writes reach the device memory, and its file).
 * uhmm_migrate over these pages skips them; uhmm_query reports them
 * DEVICE_COHERENT on m's device.  Fails: -EINVAL bad arguments or range
 * outside m; -EOPNOTSUPP m is not persistent; -EBUSY m is being removed;
 * negative errno of mmap; -EEXIST / -ENOMEM registering the mapping.
 */
int uhmm_devmem_map(struct uhmm_devmem *m, size_t offset, size_t len, int prot, void **addr);
/* Unmap a mapping from uhmm_devmem_map (whole mapping).  -EINVAL if it is not one. */
int uhmm_devmem_unmap(struct uhmm_devmem *m, void *addr, size_t len);

/*
 * Hot-remove: every page in use is evacuated to system memory (data is
 * never lost), then the block is freed.  Fails: -EINVAL NULL; -EBUSY a page
 * could not be evacuated (every page is then left as it was).
 */
int uhmm_devmem_remove(struct uhmm_devmem *m); /* persistent memory: -EBUSY while mapped */

unsigned uhmm_devmem_flags(const struct uhmm_devmem *m);
size_t uhmm_devmem_npages(const struct uhmm_devmem *m);
/* Pages of m currently holding data (reference count > 0). */
size_t uhmm_devmem_used(const struct uhmm_devmem *m);
/* HOST_BACKED devices: host address of page idx of m; NULL otherwise. */
void *uhmm_devmem_host_addr(const struct uhmm_devmem *m, size_t idx);
struct uhmm_device *uhmm_devmem_device(const struct uhmm_devmem *m);

/* ------------------------------------------------------------------------
 * Migration.
 * ---------------------------------------------------------------------- */

struct uhmm_migrate_result {
	size_t migrated; /* pages that are in the destination memory when the call returns */
	size_t skipped;  /* pages left where they were (never populated, on another device,
	                    out of device memory, copy failed, poisoned, not migratable) */
};

/*
 * Migrate [addr, addr+len) to device `to` (NULL = system memory).
 * To a device: pages in system memory move; never-populated pages are
 * skipped (they hold no data: a later touch zero-fills them); pages on
 * another device are skipped (no stealing); pages already on `to` count as
 * migrated.  To system memory: every device-resident page comes back;
 * pages already in system memory (or never populated) count as migrated.
 * Running out of device memory or a failed copy skips pages, it does not
 * fail the call.  A CPU write racing the migration is never lost.
 * Fails (nothing migrated): -EINVAL bad arguments, range not entirely
 * managed by h, or `to` belongs to another context; -ECHILD in a forked
 * child (its copy of the parent's context is not live); -ENOMEM.
 */
int uhmm_migrate(struct uhmm *h, void *addr, size_t len, struct uhmm_device *to,
                 struct uhmm_migrate_result *res);

/*
 * mprotect(2) for managed memory: userfaultfd does not report protection
 * changes, so this wrapper invalidates every mirror of [addr, addr+len)
 * (UHMM_EVENT_PROTECT) before changing the protection.  Device mappings are
 * then rebuilt by device faults under the new protection.  Use it instead of
 * mprotect for memory a device mirrors.  The memory need not be managed:
 * a mirror may map unmanaged memory too (uhmm_range_fault), so any
 * interval is accepted and every mirror of h's devices is told.
 * Fails: -EINVAL bad arguments; the negative errno of mprotect.
 */
int uhmm_mprotect(struct uhmm *h, void *addr, size_t len, int prot);

/*
 * Bring every page of h that lives in private device memory home, for a
 * fatal-signal handler (SIGSEGV, SIGABRT, ...) to call before the process
 * dumps core: a core dump or a debugger (ptrace, /proc/PID/mem) does not
 * fault device-resident pages back, so they read as zeros (core dump) or
 * fail with EIO.  Async-signal-safe on the terms of uhmm's SIGBUS handler:
 * no allocation and never a wait for a page lock (a busy page is retried a
 * bounded number of times, then left), so call it from a handler of a
 * signal raised by application code outside any uhmm call and outside the
 * device's and mirrors' callbacks (the interrupted code could hold a lock
 * the migration needs); it needs the stack a SIGBUS fault takes (about
 * 64 KiB: give a sigaltstack at least that).  Coherent pages are mapped
 * in place and stay where they are (see README "Limits").  Returns 0;
 * -EBUSY some page could not come home (it stays on its device); -EINVAL
 * h == NULL; -ECHILD in a forked child.  Also callable outside handlers.
 */
int uhmm_evacuate_all(struct uhmm *h);

/* ------------------------------------------------------------------------
 * Where each page lives.
 * ---------------------------------------------------------------------- */

enum uhmm_state {
	UHMM_STATE_NONE,            /* never populated (reads as zero) */
	UHMM_STATE_SYSTEM,          /* in system memory, mapped */
	UHMM_STATE_DEVICE,          /* in unaddressable device memory; CPU access faults it back */
	UHMM_STATE_DEVICE_COHERENT, /* in device memory the CPU addresses in place */
	UHMM_STATE_POISONED,        /* the device lost the data: access raises SIGBUS */
};

struct uhmm_page_info {
	enum uhmm_state state;
	struct uhmm_device *device; /* NULL unless the page lives in device memory */
};

/*
 * One entry per page of [addr, addr + npages pages).  A page being
 * migrated is reported in the state it had before the migration.
 * Fails: -EINVAL bad arguments; -ENOENT a page is not managed by h.
 */
int uhmm_query(struct uhmm *h, const void *addr, size_t npages, struct uhmm_page_info *out);

/* ------------------------------------------------------------------------
 * Statistics.
 * ---------------------------------------------------------------------- */

struct uhmm_stats {
	size_t sz;              /* sizeof(struct uhmm_stats), set by the caller */
	uint64_t cpu_faults;    /* CPU faults served (device → system or zero-fill) */
	uint64_t pages_to_device, pages_to_system;
	uint64_t device_faults; /* device page-fault rounds (uhmm_range_fault calls with READ/WRITE) */
	uint64_t invalidations; /* mirror invalidate callbacks run */
	/* additions */
	uint64_t pages_skipped;   /* pages migrations left where they were */
	uint64_t pages_zero_filled;
	uint64_t move_calls, copy_calls; /* kernel calls that moved / copied data */
	uint64_t fallback_pages;  /* pages migrated by copy + unmap instead of a move */
	uint64_t deferred_faults; /* faults that found their page busy and were retried */
	uint64_t events;          /* userfaultfd events (unmap, remove, remap) handled */
	uint64_t pages_poisoned;
	uint64_t pages_ahead;     /* pages fault-ahead brought home */
	/* additions (0.2) */
	uint64_t pages_staged;    /* pages a copy device took through the move-staging area */
	uint64_t pages_unshared;  /* pages unshared from a fork child so that they could move */
};
#define UHMM_STATS_INIT { .sz = sizeof(struct uhmm_stats) }

/* Snapshot of the counters (each read atomically, not all at one instant)
 * into the first min(out->sz, known) bytes of *out.  -EINVAL h or out
 * NULL, or out->sz not valid (see the top of this header). */
int uhmm_stats_get(struct uhmm *h, struct uhmm_stats *out);

/* ------------------------------------------------------------------------
 * What this machine offers (for `uhmm info`; needs no context).
 * ---------------------------------------------------------------------- */

#define UHMM_SYS_UFFD          (1u << 0)  /* userfaultfd works at all */
#define UHMM_SYS_KERNEL_FAULTS (1u << 1)  /* faults taken inside syscalls can be served */
#define UHMM_SYS_DEV_UFFD      (1u << 2)  /* opened through /dev/userfaultfd */
#define UHMM_SYS_MOVE          (1u << 3)  /* UFFDIO_MOVE */
#define UHMM_SYS_SIGBUS        (1u << 4)  /* UFFD_FEATURE_SIGBUS */
#define UHMM_SYS_POISON        (1u << 5)  /* UFFDIO_POISON */
#define UHMM_SYS_WP            (1u << 6)  /* write-protect on anonymous memory */
#define UHMM_SYS_EVENTS        (1u << 7)  /* UNMAP, REMOVE and REMAP events */
#define UHMM_SYS_EVENT_FORK    (1u << 8)
#define UHMM_SYS_THREAD_ID     (1u << 9)
#define UHMM_SYS_ZEROPAGE      (1u << 10)

/* Caller-allocated with sz set (UHMM_SYSINFO_INIT), filled by uhmm_sysinfo_get. */
struct uhmm_sysinfo {
	size_t sz;                  /* sizeof(struct uhmm_sysinfo), set by the caller */
	unsigned caps;              /* UHMM_SYS_* */
	uint64_t uffd_features;     /* raw UFFDIO_API features */
	enum uhmm_fault_mode auto_mode;   /* what AUTO picks here */
	int uffd_errno;             /* why userfaultfd failed (0 if it works) */
	int unprivileged_sysctl;    /* vm.unprivileged_userfaultfd, -1 if unreadable */
	char kernel[65];            /* uname release */
	char how[96];               /* how userfaultfd was opened, in words */
	char reason[256];           /* one sentence, never empty, NUL-terminated: why
	                               userfaultfd cannot be opened here (what
	                               uhmm_open's -EPERM / -ENOSYS means), else why
	                               AUTO picks the mode it picks (whether faults
	                               inside system calls can be served) */
	char reserved[3];           /* written as 0 (the tail padding's place) */
};
#define UHMM_SYSINFO_INIT { .sz = sizeof(struct uhmm_sysinfo) }

/*
 * Probe this machine without a context.  Returns 0 also when userfaultfd
 * does not work (caps lacks UHMM_SYS_UFFD; uffd_errno and reason say why),
 * so a program whose uhmm_open failed can report the reason in one call.
 * Writes the first min(out->sz, known) bytes.  -EINVAL out == NULL or
 * out->sz not valid (see the top of this header).
 */
int uhmm_sysinfo_get(struct uhmm_sysinfo *out);

/* ------------------------------------------------------------------------
 * Mirroring (docs/MIRROR.md): a device's view of the address space.
 * ---------------------------------------------------------------------- */

enum uhmm_event {
	UHMM_EVENT_UNMAP,        /* munmap / uhmm_free */
	UHMM_EVENT_DISCARD,      /* madvise(MADV_DONTNEED/MADV_FREE/MADV_REMOVE) */
	UHMM_EVENT_REMAP,        /* mremap moved the range */
	UHMM_EVENT_MIGRATE,      /* pages change memory (system <-> device) */
	UHMM_EVENT_PROTECT,      /* protection change made through uhmm */
	UHMM_EVENT_RANGE_REMOVE, /* uhmm_range_remove / uhmm_close */
};

struct uhmm_mirror_ops {
	/*
	 * [start, end) is about to change: drop every device mapping of it.
	 * Called before the change becomes visible, with no uhmm lock held
	 * that uhmm_range_fault could need; may run on any thread (see the
	 * callback rules on struct uhmm_device_ops).  A migration that this
	 * mirror's own device initiated from its device fault (uhmm_range_fault
	 * bringing another device's page home) is not reported back to it;
	 * every other change is, uhmm_migrate to this device included (its
	 * system-memory mappings of those pages go stale).  May be NULL: the
	 * sequence still advances, for a device that only uses read_retry.
	 */
	void (*invalidate)(struct uhmm_mirror *m, uintptr_t start, uintptr_t end,
	                   enum uhmm_event ev);
};

/* Register the (single) mirror of device d.  Fails: -EINVAL NULL argument;
 * -EEXIST one exists; -ENOMEM. */
int uhmm_mirror_register(struct uhmm_device *d, const struct uhmm_mirror_ops *ops,
                         void *priv, struct uhmm_mirror **out);
/*
 * Unregister and free mirror m; no invalidate callback of it runs after
 * return.  uhmm_device_destroy unregisters a device's mirror itself.
 * Fails: -EINVAL m == NULL; -ENOENT m is not its device's mirror (a
 * defensive check only: m is freed on success, so passing it again, or
 * after its device was destroyed, is a use after free).
 */
int uhmm_mirror_unregister(struct uhmm_mirror *m);
void *uhmm_mirror_priv(const struct uhmm_mirror *m);

/*
 * The retry protocol:
 *     again: seq = uhmm_mirror_read_begin(m);
 *            uhmm_range_fault(m, ..., entries);
 *            lock(device page table);
 *            if (uhmm_mirror_read_retry(m, seq)) { unlock; goto again; }
 *            program the device page table from entries; unlock;
 * read_begin must be called again on every retry (a stale sequence makes
 * the loop spin).  read_retry returns 1 when an invalidation ran since
 * read_begin.
 */
uint64_t uhmm_mirror_read_begin(struct uhmm_mirror *m);
int uhmm_mirror_read_retry(struct uhmm_mirror *m, uint64_t seq);

/* Per-page entry filled by uhmm_range_fault. */
#define UHMM_ENTRY_VALID         (1u << 0) /* the device may map it (system memory) */
#define UHMM_ENTRY_WRITE         (1u << 1) /* ... writable */
#define UHMM_ENTRY_ZERO          (1u << 2) /* the shared zero page */
#define UHMM_ENTRY_ERROR         (1u << 3) /* no access, unmapped, or poisoned */
#define UHMM_ENTRY_DEVICE_LOCAL  (1u << 4) /* private memory of this mirror's device: mem/index valid */
#define UHMM_ENTRY_DEVICE_REMOTE (1u << 5) /* private memory of another device */
#define UHMM_ENTRY_COHERENT      (1u << 6) /* with DEVICE_*: addressable device memory */
#define UHMM_ENTRY_NONE          (1u << 7) /* never populated */

struct uhmm_range_entry {
	unsigned flags;          /* UHMM_ENTRY_* */
	struct uhmm_devmem *mem; /* DEVICE_LOCAL: the block holding the page */
	size_t index;            /* DEVICE_LOCAL: page index within mem */
};

#define UHMM_RANGE_SNAPSHOT 0u        /* report, populate nothing, migrate nothing */
#define UHMM_RANGE_READ     (1u << 0) /* make every page readable by the device */
#define UHMM_RANGE_WRITE    (1u << 1) /* ... and writable */

/*
 * Fill entries[0..npages) for [addr, ...).  With READ/WRITE, never-populated
 * pages are populated (zero page for READ) and pages private to another
 * device are brought back to system memory; pages local to this device are
 * left in place.  A page outside managed memory is VALID or ERROR from
 * the process's mappings, and WRITE as its own page table entry would be:
 * in a private mapping a page that is not yet this process's own copy (a
 * file page not copied on write, an untouched page of a file mapping, the
 * zero page, a page shared with a forked child) is not WRITE; with
 * UHMM_RANGE_WRITE such a page is faulted in for write first, copied on
 * write as the CPU's write fault would (MADV_POPULATE_WRITE, Linux 5.14:
 * -EFAULT if that fails, on older kernels too).  Memory of other contexts
 * and uhmm's own mappings are reported from their mapping only.  See
 * README "Device access to unmanaged memory".  Each call with READ or WRITE counts one device fault
 * round.  Fails: -EINVAL bad arguments; -EFAULT with
 * READ/WRITE a page has no access (PROT_NONE, unmapped); -EPERM with WRITE a
 * page is read-only.  Entries are valid for that call's sequence only.
 */
int uhmm_range_fault(struct uhmm_mirror *m, const void *addr, size_t npages, unsigned flags,
                     struct uhmm_range_entry *entries);

/* ------------------------------------------------------------------------
 * The dummy device: simulated, always available.
 * ---------------------------------------------------------------------- */

struct uhmm_dummy_options {
	size_t sz;             /* sizeof(struct uhmm_dummy_options) */
	size_t capacity;       /* bytes of device memory; 0 = 1 GiB; added in chunks on demand
	                          (persistent memory: all at creation) */
	unsigned devmem_flags; /* 0 = DEVICE | ALLOW_MIGRATION | UNADDRESSABLE; any valid class */
	const char *path;      /* persistent / coherent memory: backing file (NULL = memory file) */
	/* additions (0.2) */
	uint64_t flags;        /* UHMM_DUMMY_* below */
};
/*
 * UHMM_DUMMY_COPY_DEVICE: the device is not HOST_BACKED: its memory is its
 * own (host memory uhmm never maps for it) and data reaches it only through
 * copy_to_device / copy_from_device, the path every real device takes.
 * Private (unaddressable) memory only: -EINVAL with other devmem_flags or
 * a path.
 */
#define UHMM_DUMMY_COPY_DEVICE (1u << 0)
#define UHMM_DUMMY_OPTIONS_INIT { .sz = sizeof(struct uhmm_dummy_options) }

/* The dummy device's first (for persistent memory: only) block. */
struct uhmm_devmem *uhmm_dummy_devmem(struct uhmm_device *d);

/* Chunk by which the dummy device adds memory; capacity is rounded up to it. */
#define UHMM_DUMMY_CHUNK (64u << 20)

/*
 * Create a dummy device on h: host memory that application pointers never
 * point into, its own page table, and device operations below.  o may be
 * NULL (defaults).  Fails: -EINVAL NULL h/out, o->sz not valid (see the
 * top of this header) or invalid devmem_flags; -EOPNOTSUPP a
 * classification this build cannot provide; -ENOSPC h already has 32
 * devices; -ENOMEM; with a path, the negative errno of open/ftruncate.
 */
int uhmm_dummy_create(struct uhmm *h, const struct uhmm_dummy_options *o,
                      struct uhmm_device **out);

struct uhmm_dummy_counters {
	uint64_t cpages; /* pages copied */
	uint64_t faults; /* device page-fault rounds */
};

/*
 * Device-side access through the device's own page table, taking device
 * faults into uhmm as needed (pages on another device come back through
 * system memory).  c may be NULL; counters are added to.
 * Fails: -EINVAL bad arguments or d not a dummy device; -EFAULT no access
 * (PROT_NONE, unmapped, poisoned); -EPERM write to read-only memory;
 * -ENODEV the device was lost (UHMM_DUMMY_LOST).  On
 * failure buf (read) or memory (write) may be partly done, never torn
 * within a page.
 */
int uhmm_dummy_read(struct uhmm_device *d, const void *addr, void *buf, size_t npages,
                    struct uhmm_dummy_counters *c);
int uhmm_dummy_write(struct uhmm_device *d, void *addr, const void *buf, size_t npages,
                     struct uhmm_dummy_counters *c);

/* One byte per page, without faulting anything in. */
#define UHMM_SNAP_NONE                0x00
#define UHMM_SNAP_READ                0x01
#define UHMM_SNAP_WRITE               0x02
#define UHMM_SNAP_HUGE                0x04
#define UHMM_SNAP_ZERO                0x10
#define UHMM_SNAP_DEV_PRIVATE_LOCAL   0x20
#define UHMM_SNAP_DEV_PRIVATE_REMOTE  0x30
#define UHMM_SNAP_DEV_COHERENT_LOCAL  0x40
#define UHMM_SNAP_DEV_COHERENT_REMOTE 0x50
#define UHMM_SNAP_ERROR               0xFF

/*
 * Classify each page into one UHMM_SNAP_* byte: a page private to another
 * device is reported DEV_PRIVATE_REMOTE.  Never migrates or populates.
 * Fails: -EINVAL bad arguments or d not a dummy device.
 */
int uhmm_dummy_snapshot(struct uhmm_device *d, const void *addr, size_t npages, uint8_t *out);

/* Evict all of the device's memory to system memory.  -EINVAL d is not a
 * dummy device; -EBUSY a page could not come back. */
int uhmm_dummy_release(struct uhmm_device *d);

#define UHMM_DUMMY_FAIL_ALLOC (1u << 0) /* device memory allocation fails */
#define UHMM_DUMMY_FAIL_COPY  (1u << 1) /* copies into/out of the device fail */
#define UHMM_DUMMY_LOST       (1u << 2) /* device gone: its pages are poisoned */
/* UHMM_DUMMY_COPY_DEVICE only: copy_to_device itself fails, after uhmm
 * took the pages out of the page table (they must go back). */
#define UHMM_DUMMY_FAIL_COPY_LATE (1u << 3)
/* Set fault injection flags (replaces the previous set).  -EINVAL unknown bits. */
int uhmm_dummy_set_fail(struct uhmm_device *d, unsigned flags);

/* Counters of the device since creation.  -EINVAL d not a dummy or c NULL. */
int uhmm_dummy_counters_get(struct uhmm_device *d, struct uhmm_dummy_counters *c);

/*
 * Exclusive (atomic) device access to [addr, addr + npages pages): the
 * pages move into the device's memory (never-populated ones are populated
 * first) and are marked exclusive in its page table; any CPU touch brings
 * them back and revokes the exclusivity.  A page held by another device is
 * taken from it (through system memory), as the kernel does.
 * On a device whose memory is coherent (devmem_flags DEVICE |
 * ALLOW_MIGRATION) the CPU would read and write the pages in place with no
 * fault, so exclusive pages leave coherent memory: the 2 MiB granules they
 * are in come home whole (the rest of each granule stays in system memory)
 * and the pages move into a private block the device adds for them on
 * first use (UHMM_DUMMY_CHUNK, counted in its capacity).  They are then
 * UHMM_STATE_DEVICE on d, and any CPU access, read or write, faults them
 * home and revokes the exclusivity, as on a private device; a later
 * uhmm_migrate to d skips a granule holding such a page until the CPU has
 * touched it.  Fails: -EINVAL bad arguments; -EFAULT / -EPERM no (write)
 * access; -EBUSY a page could not be made exclusive (out of device memory)
 * — pages already made exclusive stay so; otherwise the errors of
 * uhmm_migrate and (coherent devices) uhmm_devmem_add.
 */
int uhmm_dummy_exclusive(struct uhmm_device *d, void *addr, size_t npages);
/* 0 if the CPU revoked exclusivity of every page; -EPERM if one is still
 * exclusive; -EINVAL bad arguments or d not a dummy device. */
int uhmm_dummy_check_exclusive(struct uhmm_device *d, void *addr, size_t npages);

#ifdef __cplusplus
}
#endif
#endif /* UHMM_H */
