/* SPDX-License-Identifier: MIT */
/*
 * uhmm CUDA backend: NVIDIA GPUs through the CUDA *driver* API.
 *
 * The driver (libcuda.so.1) is loaded with dlopen() the first time one of
 * these calls needs it; uhmm has no build-time dependency on CUDA, and on a
 * machine without a driver or GPU every call fails cleanly (-ENOENT: no
 * driver library; -ENODEV: the driver cannot initialise or there is no such
 * GPU) with the reason in uhmm_cuda_last_error(NULL).  The environment
 * variable UHMM_CUDA_LIBRARY names another library to load instead (a
 * driver outside the loader's path, or the test suite's simulated driver).
 *
 * Model
 *  - uhmm_cuda_create() registers the GPU as a uhmm device whose memory is
 *    DEVICE | ALLOW_MIGRATION | UNADDRESSABLE: a page that migrates to the
 *    GPU is absent from the CPU page table, and a CPU touch faults it home
 *    (per the core).  Data moves with the GPU's copy engines through pinned
 *    staging memory and asynchronous copies on the device's stream.
 *  - GPU memory is physical 2 MiB chunks (cuMemCreate), taken on demand up
 *    to the capacity; when the GPU is full, pages stay on the host and are
 *    counted as skipped (uhmm_migrate_result.skipped, stats.pages_skipped).
 *  - Each managed range has a mirror: a reserved GPU virtual range of the
 *    same length, offset for offset.  uhmm_cuda_ptr(dev, p) is the GPU
 *    address of host address p, so a kernel indexes the data exactly as the
 *    host does.
 *
 * Limits (read these)
 *  - A GPU cannot take a page fault into user space.  A GPU address from
 *    uhmm_cuda_ptr() is only backed while its 2 MiB granule is resident and
 *    mapped, i.e. after uhmm_cuda_prefetch() (or uhmm_cuda_launch(), which
 *    prefetches what a kernel declares it uses) and until the CPU touches a
 *    page of that granule, the range is unmapped/discarded/remapped, or the
 *    pages migrate elsewhere.  Establish residency before every launch.
 *    A kernel touching an unmapped granule gets CUDA_ERROR_ILLEGAL_ADDRESS,
 *    which is fatal to the CUDA context.
 *  - Do not touch (from the CPU) or change memory a running kernel uses;
 *    wait for the kernel first (uhmm_cuda_sync()).  A CPU touch during a
 *    kernel unmaps the granule under it.
 *  - Residency is per 2 MiB granule of a managed range (offsets from the
 *    range's start): prefetch rounds out to whole granules and populates
 *    never-touched pages of them with zeros.
 *  - GPU mappings are read/write whatever the host protection.
 *  - Do not pass managed host pointers to CUDA API calls (cuMemcpy from a
 *    managed buffer, cuMemHostRegister): the driver would fault on a
 *    device-resident page while holding its own locks.  Use GPU pointers.
 *  - In SIGBUS fault mode the device callbacks (driver calls included) run
 *    in the faulting thread's signal handler; that is safe as long as the
 *    faulting code is not itself inside the CUDA driver (see the previous
 *    point).  THREAD mode avoids the question entirely.
 *
 * Costs (measured on an H100, docs/PERFORMANCE.md)
 *  - Kernels on resident uhmm memory run at the speed of cuMemAlloc memory
 *    (SAXPY 1.00x); uhmm_cuda_launch's residency check costs about 1 %.
 *  - Moving data is the expensive part: about 3.5 GB/s each way per thread
 *    (the kernel's per-page work, not the copy engines), so place data once
 *    and keep it there; several threads migrating disjoint parts bring data
 *    home faster (10 GB/s with four).
 *  - A CPU reading GPU-written data back in order: uhmm_options.fault_ahead
 *    (e.g. 4-8, SIGBUS mode) brings it home about as fast as managed
 *    memory; without it, about 2.3 times slower.
 */
#ifndef UHMM_CUDA_H
#define UHMM_CUDA_H

#include "uhmm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Granule of GPU memory and of residency (cuMemCreate / cuMemMap unit). */
#define UHMM_CUDA_GRANULE (2u << 20)

#define UHMM_CUDA_MAX_DEVICES 16

struct uhmm_cuda_device_info {
	char name[128];
	uint64_t total_mem;   /* bytes (cuDeviceTotalMem) */
	int cc_major, cc_minor; /* compute capability */
	int vmm;              /* virtual memory management supported (needed by uhmm) */
};

struct uhmm_cuda_info {
	size_t sz;            /* sizeof(struct uhmm_cuda_info), set by the caller */
	int driver_version;   /* e.g. 12040 for 12.4; 0 if the driver did not say */
	int device_count;     /* GPUs the driver reports (only the first
	                         UHMM_CUDA_MAX_DEVICES are described) */
	struct uhmm_cuda_device_info dev[UHMM_CUDA_MAX_DEVICES];
	char library[128];    /* the library loaded (or tried) */
	char reason[256];     /* why the driver is not usable; "" when it is */
};
#define UHMM_CUDA_INFO_INIT { .sz = sizeof(struct uhmm_cuda_info) }

/*
 * Is a CUDA driver with at least one GPU usable here?  Fills *out either
 * way (as far as it got).  Returns 0; -ENOENT the driver library cannot be
 * loaded or lacks a needed entry point (too old: CUDA 10.2+ is needed);
 * -ENODEV cuInit failed or there is no GPU; -EINVAL out == NULL or out->sz
 * not valid (uhmm.h, "How the ABI evolves"; nothing is filled then).  The
 * first min(out->sz, known) bytes are written.
 */
int uhmm_cuda_available(struct uhmm_cuda_info *out);

struct uhmm_cuda_options {
	size_t sz;            /* sizeof(struct uhmm_cuda_options) */
	/* Bytes of GPU memory uhmm may use for this device, rounded down to
	 * UHMM_CUDA_GRANULE.  0 = the GPU's free memory at creation less a
	 * reserve of 1/16 (at least 256 MiB) for kernels and other users.
	 * Physical memory is taken lazily, so a capacity above what is free
	 * only means that migrations find the GPU full (pages skipped). */
	size_t capacity;
	unsigned flags;       /* none defined: 0 */
	unsigned reserved;    /* 0 (the tail padding's place: uhmm.h, "How the ABI evolves") */
};
#define UHMM_CUDA_OPTIONS_INIT { .sz = sizeof(struct uhmm_cuda_options) }

/*
 * Register GPU `ordinal` as a device of context h (device name "cuda<N>").
 * opts may be NULL.  Destroy it with uhmm_device_destroy() (or uhmm_close()),
 * which brings every page home first.
 * Fails: -EINVAL NULL h/out, ordinal < 0, opts->sz not valid (uhmm.h, "How
 * the ABI evolves"), unknown flags; -ENOENT / -ENODEV
 * as uhmm_cuda_available (and -ENODEV: no GPU with that ordinal);
 * -EOPNOTSUPP the GPU lacks virtual memory management or has an allocation
 * granularity that does not divide 2 MiB; -ENOMEM; -EIO other driver errors.
 */
int uhmm_cuda_create(struct uhmm *h, int ordinal, const struct uhmm_cuda_options *opts,
                     struct uhmm_device **out);

/* Is d a CUDA device (from uhmm_cuda_create)? */
int uhmm_cuda_is_cuda(const struct uhmm_device *d);

/*
 * GPU address (a CUdeviceptr) of host address p in managed memory, or 0
 * when d is not a CUDA device or p lies in no range this device mirrors yet
 * (a range gets its mirror at its first prefetch).  Pure arithmetic: the
 * address is backed only while its granule is resident (see Limits).
 */
uint64_t uhmm_cuda_ptr(struct uhmm_device *d, const void *p);

/*
 * Migrate [p, p + len) to the GPU (rounded out to 2 MiB granules of its
 * managed range), populate never-touched pages with zeros, and map every
 * granule at its mirror address: on return 0, uhmm_cuda_ptr() addresses of
 * the whole interval are valid for kernels (until the CPU touches them).
 * Pages brought back from another device come through system memory.
 * Synchronous: copies are complete on return.  res (may be NULL) counts
 * pages of the rounded interval.
 * Fails: -EINVAL bad arguments, d not a CUDA device, or the interval not
 * entirely managed memory of d's context; -EFAULT a page has no access;
 * -ENOMEM the GPU is full (pages that did not fit stay on the host,
 * counted in res->skipped); -EBUSY a page kept moving away (CPU touches
 * racing the prefetch); -EIO / -ENODEV driver errors.
 */
int uhmm_cuda_prefetch(struct uhmm_device *d, void *p, size_t len, struct uhmm_migrate_result *res);

/* ------------------------------------------------------------------------
 * Kernels.
 * ---------------------------------------------------------------------- */

struct uhmm_cuda_span {
	void *addr; /* managed memory a kernel uses (any alignment: rounded out) */
	size_t len;
};

struct uhmm_cuda_launch {
	size_t sz;                /* sizeof(struct uhmm_cuda_launch) (uhmm.h, "How the ABI evolves") */
	void *function;           /* CUfunction, e.g. from uhmm_cuda_function() */
	unsigned grid[3];         /* 0 entries are taken as 1 */
	unsigned block[3];
	unsigned shared_mem;      /* dynamic shared memory bytes */
	void **params;            /* kernelParams, as for cuLaunchKernel */
	const struct uhmm_cuda_span *uses; /* every managed range the kernel touches */
	size_t nuses;
	void *stream;             /* CUstream; NULL = the device's own stream */
};
#define UHMM_CUDA_LAUNCH_INIT { .sz = sizeof(struct uhmm_cuda_launch) }

/*
 * Prefetch every span in l->uses, then launch the kernel (asynchronously:
 * wait with uhmm_cuda_sync()).  The kernel must touch no managed memory
 * outside its declared spans.  Fails: -EINVAL d not a CUDA device, l or
 * l->function NULL, l->sz not valid, or nuses without uses; as uhmm_cuda_prefetch (nothing
 * is launched then); the launch failed: -EIO, or, by the driver's error,
 * -ENOMEM (out of memory), -ENODEV (driver or GPU unusable), -EOPNOTSUPP
 * (not supported) — uhmm_cuda_last_error says which.
 *
 * Driver errors map the same way in every call of this header:
 * CUDA_ERROR_OUT_OF_MEMORY is -ENOMEM; NOT_INITIALIZED, DEINITIALIZED,
 * STUB_LIBRARY, INSUFFICIENT_DRIVER, DEVICE_UNAVAILABLE, NO_DEVICE and
 * INVALID_DEVICE are -ENODEV; NOT_SUPPORTED is -EOPNOTSUPP; any other is
 * -EIO.
 */
int uhmm_cuda_launch(struct uhmm_device *d, const struct uhmm_cuda_launch *l);

/*
 * Load a module image (PTX text, cubin or fatbin, as cuModuleLoadData) into
 * the device's context and look up a kernel by name.  The module lives
 * until the device is destroyed.  Fails: -EINVAL NULL argument or d not a
 * CUDA device; -ENOENT no such kernel; -ENOMEM; -EIO the image did not
 * load, or -ENODEV / -EOPNOTSUPP by the driver's error (the mapping under
 * uhmm_cuda_launch; uhmm_cuda_last_error says why).
 */
int uhmm_cuda_function(struct uhmm_device *d, const void *image, const char *name,
                       void **function);

/* Wait for all work in the device's context (cuCtxSynchronize).  Fails:
 * -EINVAL d is not a CUDA device; the driver's error mapped as under
 * uhmm_cuda_launch (a kernel that faulted: -EIO, and the context is lost). */
int uhmm_cuda_sync(struct uhmm_device *d);

/* ------------------------------------------------------------------------
 * Diagnostics and interoperation.
 * ---------------------------------------------------------------------- */

/*
 * The last CUDA error seen, in words ("cuMemCreate: out of memory
 * (CUDA_ERROR_OUT_OF_MEMORY)"): of device d, or with d == NULL of the
 * calling thread's last uhmm_cuda_available/uhmm_cuda_create.  Never NULL;
 * "" when there was none.
 */
const char *uhmm_cuda_last_error(const struct uhmm_device *d);

/* The CUcontext (the GPU's primary context) of device d, or NULL. */
void *uhmm_cuda_context(const struct uhmm_device *d);

/* The CUstream the device copies on, or NULL. */
void *uhmm_cuda_stream(const struct uhmm_device *d);

/*
 * An entry point of the loaded driver (dlsym on it), for applications and
 * tests that call the driver directly with the same library uhmm uses;
 * NULL if the driver is not loaded or lacks it.
 */
void *uhmm_cuda_driver_symbol(const char *name);

struct uhmm_cuda_stats {
	size_t sz;                  /* sizeof(struct uhmm_cuda_stats), set by the caller */
	uint64_t capacity;          /* bytes this device may use */
	uint64_t physical;          /* bytes of GPU memory allocated (cuMemCreate) now */
	uint64_t bytes_to_device;   /* copied host -> GPU */
	uint64_t bytes_to_host;     /* copied GPU -> host */
	uint64_t pages_compacted;   /* pages moved GPU-side to line a granule up for mapping */
	uint64_t granules_mapped;   /* cuMemMap calls into mirrors */
	uint64_t granules_unmapped; /* ... undone by invalidations */
	uint64_t alloc_failures;    /* cuMemCreate failures (GPU full) */
};
#define UHMM_CUDA_STATS_INIT { .sz = sizeof(struct uhmm_cuda_stats) }

/* Snapshot of d's counters into the first min(out->sz, known) bytes of
 * *out.  -EINVAL d is not a CUDA device, out is NULL or out->sz not valid. */
int uhmm_cuda_stats_get(struct uhmm_device *d, struct uhmm_cuda_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* UHMM_CUDA_H */
