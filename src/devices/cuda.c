/* SPDX-License-Identifier: MIT */
/*
 * The CUDA device: NVIDIA GPUs through the CUDA driver API, loaded with
 * dlopen("libcuda.so.1") at run time (no build-time dependency: the few
 * types, constants and entry points used are declared below from the
 * public driver API documentation).
 *
 * Physical memory and the page -> GPU memory map
 *   GPU memory is a set of 2 MiB physical chunks (one cuMemCreate handle
 *   each), created on demand and mapped back to back into one reserved
 *   "pool" virtual range, so GPU page slot s (chunk s / 512, page s % 512)
 *   lives at pool + s * 4 KiB.  The core names device pages (devmem block,
 *   index); slot_of[index] says which slot holds that page (0 = none).
 *   copy_to_device takes slots (a whole 512-page batch takes a fresh chunk
 *   in order), page_free gives them back.  Empty chunks are kept for reuse
 *   (no driver call on the free path) and released when the device goes.
 *   When cuMemCreate fails (GPU full) the copy fails with -ENOMEM and the
 *   core leaves those pages on the host, counted as skipped.
 *
 * Mirrors: GPU addresses equal to host addresses, offset for offset
 *   Each managed range that is prefetched gets a "vspace": a reserved GPU
 *   virtual range of the same length (2 MiB aligned), so
 *   uhmm_cuda_ptr(p) = base + (p - range start).  cuMemMap works in whole
 *   2 MiB chunks, so a granule G of the range (pages [G*512, G*512+512)
 *   from its start) can be mapped only when every one of its pages is on
 *   this GPU and page i of the granule sits in slot i of one chunk.
 *   uhmm_cuda_prefetch migrates the granule, snapshots it through the
 *   mirror (uhmm_range_fault SNAPSHOT gives (block, index) per page), and
 *   if the pages are not lined up, copies them GPU-side into a fresh chunk
 *   in order ("compaction": the page's slot changes, the page stays on the
 *   GPU), then maps that chunk at the granule.  The mirror's invalidate
 *   callback unmaps every granule overlapping the interval that changes
 *   (CPU fault, migration, unmap, discard, remap, protection change), so
 *   a stale mapping never outlives the data it showed.  Mapping follows the
 *   core's retry protocol: read_begin, snapshot, lock, read_retry, map.
 *
 * Locking: b->lock guards slots, chunks and vspaces; it is held across
 *   driver calls but never while waiting for uhmm (no page lock is taken
 *   under it), and nothing touches managed memory while holding it, so the
 *   copy callbacks may take it in the SIGBUS handler.  Copies are
 *   serialised per device (one stream).  Host data goes through pinned
 *   memory: the buffers lent to the core (dma_buf_get: the core reads
 *   pages into them and installs pages from them, so a copy is one DMA),
 *   else our bounce buffer, with memcpy of a piece overlapping the DMA of
 *   the previous one.
 *
 * Driver calls need the device's context current: each entry point makes
 * it current on the calling thread and restores what was current before.
 */
#include "../internal.h"
#include "uhmm_cuda.h"

/* Sized structs of uhmm_cuda.h (see sized_check in internal.h). */
#define CUDA_OPTIONS_V1    offsetofend(struct uhmm_cuda_options, reserved)
#define CUDA_OPTIONS_KNOWN offsetofend(struct uhmm_cuda_options, reserved)
#define CUDA_INFO_V1       offsetofend(struct uhmm_cuda_info, reason)
#define CUDA_INFO_KNOWN    offsetofend(struct uhmm_cuda_info, reason)
#define CUDA_STATS_V1      offsetofend(struct uhmm_cuda_stats, alloc_failures)
#define CUDA_STATS_KNOWN   offsetofend(struct uhmm_cuda_stats, alloc_failures)
_Static_assert(CUDA_OPTIONS_KNOWN == sizeof(struct uhmm_cuda_options), "tail padding");
_Static_assert(CUDA_INFO_KNOWN == sizeof(struct uhmm_cuda_info), "tail padding");
#define CUDA_LAUNCH_V1     offsetofend(struct uhmm_cuda_launch, stream)
#define CUDA_LAUNCH_KNOWN  offsetofend(struct uhmm_cuda_launch, stream)
_Static_assert(CUDA_LAUNCH_KNOWN == sizeof(struct uhmm_cuda_launch), "tail padding");
_Static_assert(CUDA_STATS_KNOWN == sizeof(struct uhmm_cuda_stats), "tail padding");

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* ------------------------------------------------------------------------
 * The driver API subset (CUDA driver API reference, cuda.h).
 * ---------------------------------------------------------------------- */
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;

#define CUDA_SUCCESS                     0
#define CUDA_ERROR_INVALID_VALUE         1
#define CUDA_ERROR_OUT_OF_MEMORY         2
#define CUDA_ERROR_NOT_INITIALIZED       3
#define CUDA_ERROR_DEINITIALIZED         4
#define CUDA_ERROR_STUB_LIBRARY          34
#define CUDA_ERROR_INSUFFICIENT_DRIVER   35
#define CUDA_ERROR_DEVICE_UNAVAILABLE    46
#define CUDA_ERROR_NO_DEVICE             100
#define CUDA_ERROR_INVALID_DEVICE        101
#define CUDA_ERROR_NOT_FOUND             500
#define CUDA_ERROR_NOT_SUPPORTED         801

#define CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR         75
#define CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR         76
#define CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED 102

#define CU_MEM_ALLOCATION_TYPE_PINNED      0x1
#define CU_MEM_HANDLE_TYPE_NONE            0x0
#define CU_MEM_LOCATION_TYPE_DEVICE        0x1
#define CU_MEM_ACCESS_FLAGS_PROT_READWRITE 0x3
#define CU_MEM_ALLOC_GRANULARITY_MINIMUM   0x0
#define CU_MEMHOSTALLOC_PORTABLE           0x1
#define CU_STREAM_NON_BLOCKING             0x1
#define CU_EVENT_DISABLE_TIMING            0x2

typedef struct {
	int type; /* CUmemLocationType */
	int id;
} CUmemLocation;

typedef struct {
	int type;                 /* CUmemAllocationType */
	int requestedHandleTypes; /* CUmemAllocationHandleType */
	CUmemLocation location;
	void *win32HandleMetaData;
	struct {
		unsigned char compressionType;
		unsigned char gpuDirectRDMACapable;
		unsigned short usage;
		unsigned char reserved[4];
	} allocFlags;
} CUmemAllocationProp;

typedef struct {
	CUmemLocation location;
	int flags; /* CUmemAccess_flags */
} CUmemAccessDesc;

/* Entry points: X(name, symbol, return/args), all required unless marked. */
#define CU_REQUIRED(X) \
	X(cuInit, "cuInit", (unsigned)) \
	X(cuDriverGetVersion, "cuDriverGetVersion", (int *)) \
	X(cuDeviceGetCount, "cuDeviceGetCount", (int *)) \
	X(cuDeviceGet, "cuDeviceGet", (CUdevice *, int)) \
	X(cuDeviceGetName, "cuDeviceGetName", (char *, int, CUdevice)) \
	X(cuDeviceTotalMem, "cuDeviceTotalMem_v2", (size_t *, CUdevice)) \
	X(cuDeviceGetAttribute, "cuDeviceGetAttribute", (int *, int, CUdevice)) \
	X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", (CUcontext *, CUdevice)) \
	X(cuCtxSetCurrent, "cuCtxSetCurrent", (CUcontext)) \
	X(cuCtxGetCurrent, "cuCtxGetCurrent", (CUcontext *)) \
	X(cuCtxSynchronize, "cuCtxSynchronize", (void)) \
	X(cuMemGetInfo, "cuMemGetInfo_v2", (size_t *, size_t *)) \
	X(cuMemCreate, "cuMemCreate", (CUmemGenericAllocationHandle *, size_t, \
	                               const CUmemAllocationProp *, unsigned long long)) \
	X(cuMemRelease, "cuMemRelease", (CUmemGenericAllocationHandle)) \
	X(cuMemAddressReserve, "cuMemAddressReserve", (CUdeviceptr *, size_t, size_t, CUdeviceptr, \
	                                               unsigned long long)) \
	X(cuMemAddressFree, "cuMemAddressFree", (CUdeviceptr, size_t)) \
	X(cuMemMap, "cuMemMap", (CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, \
	                         unsigned long long)) \
	X(cuMemUnmap, "cuMemUnmap", (CUdeviceptr, size_t)) \
	X(cuMemSetAccess, "cuMemSetAccess", (CUdeviceptr, size_t, const CUmemAccessDesc *, size_t)) \
	X(cuMemGetAllocationGranularity, "cuMemGetAllocationGranularity", \
	  (size_t *, const CUmemAllocationProp *, int)) \
	X(cuMemHostAlloc, "cuMemHostAlloc", (void **, size_t, unsigned)) \
	X(cuMemFreeHost, "cuMemFreeHost", (void *)) \
	X(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", (CUdeviceptr, const void *, size_t, CUstream)) \
	X(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", (void *, CUdeviceptr, size_t, CUstream)) \
	X(cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2", (CUdeviceptr, CUdeviceptr, size_t, CUstream)) \
	X(cuStreamCreate, "cuStreamCreate", (CUstream *, unsigned)) \
	X(cuStreamDestroy, "cuStreamDestroy_v2", (CUstream)) \
	X(cuStreamSynchronize, "cuStreamSynchronize", (CUstream)) \
	X(cuEventCreate, "cuEventCreate", (CUevent *, unsigned)) \
	X(cuEventDestroy, "cuEventDestroy_v2", (CUevent)) \
	X(cuEventRecord, "cuEventRecord", (CUevent, CUstream)) \
	X(cuEventSynchronize, "cuEventSynchronize", (CUevent)) \
	X(cuModuleLoadData, "cuModuleLoadData", (CUmodule *, const void *)) \
	X(cuModuleUnload, "cuModuleUnload", (CUmodule)) \
	X(cuModuleGetFunction, "cuModuleGetFunction", (CUfunction *, CUmodule, const char *)) \
	X(cuLaunchKernel, "cuLaunchKernel", (CUfunction, unsigned, unsigned, unsigned, unsigned, \
	                                     unsigned, unsigned, unsigned, CUstream, void **, void **))

#define CU_OPTIONAL(X) \
	X(cuGetErrorString, "cuGetErrorString", (CUresult, const char **)) \
	X(cuGetErrorName, "cuGetErrorName", (CUresult, const char **)) \
	X(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", (CUdevice)) \
	X(cuDevicePrimaryCtxRelease_v1, "cuDevicePrimaryCtxRelease", (CUdevice))

#define CU_FIELD(name, sym, args) CUresult (*name) args;
static struct {
	CU_REQUIRED(CU_FIELD)
	CU_OPTIONAL(CU_FIELD)
} D;

/* Load state, process wide: the library is never closed once initialised
 * (unloading a CUDA driver under a live process is not supported). */
static pthread_mutex_t g_load_lock = PTHREAD_MUTEX_INITIALIZER;
static bool g_tried;
static int g_load_rc;
static void *g_lib;
static char g_lib_name[128];
static char g_load_reason[256];

/* The calling thread's last error (uhmm_cuda_last_error(NULL)). */
static __thread char t_err[256];

/* Bounded string copy that never fails and is async-signal-safe. */
static void scopy(char *dst, size_t n, const char *a, const char *b, const char *c)
{
	size_t k = 0;
	const char *parts[3] = { a, b, c };
	for (int i = 0; i < 3; i++)
		for (const char *s = parts[i]; s && *s && k + 1 < n; s++)
			dst[k++] = *s;
	if (n)
		dst[k] = '\0';
}

static const char *cu_name(CUresult r)
{
	const char *s = NULL;
	if (!D.cuGetErrorName || D.cuGetErrorName(r, &s) != CUDA_SUCCESS || !s)
		return "CUDA error";
	return s;
}

static const char *cu_string(CUresult r)
{
	const char *s = NULL;
	if (!D.cuGetErrorString || D.cuGetErrorString(r, &s) != CUDA_SUCCESS || !s)
		return "unknown error";
	return s;
}

/* "func: description (CUDA_ERROR_NAME)" into dst. */
static void cu_describe(char *dst, size_t n, const char *func, CUresult r)
{
	char tail[96];
	scopy(tail, sizeof(tail), " (", cu_name(r), ")");
	char head[96];
	scopy(head, sizeof(head), func, ": ", NULL);
	char mid[160];
	scopy(mid, sizeof(mid), head, cu_string(r), NULL);
	scopy(dst, n, mid, tail, NULL);
}

/* CUDA error -> negative errno. */
static int cu_errno(CUresult r)
{
	switch (r) {
	case CUDA_SUCCESS:
		return 0;
	case CUDA_ERROR_OUT_OF_MEMORY:
		return -ENOMEM;
	case CUDA_ERROR_NOT_INITIALIZED:
	case CUDA_ERROR_DEINITIALIZED:
	case CUDA_ERROR_STUB_LIBRARY:
	case CUDA_ERROR_INSUFFICIENT_DRIVER:
	case CUDA_ERROR_DEVICE_UNAVAILABLE:
	case CUDA_ERROR_NO_DEVICE:
	case CUDA_ERROR_INVALID_DEVICE:
		return -ENODEV;
	case CUDA_ERROR_NOT_SUPPORTED:
		return -EOPNOTSUPP;
	default:
		return -EIO;
	}
}

/* Load the driver and cuInit once.  0, -ENOENT or -ENODEV; reason set. */
static int cuda_load(void)
{
	pthread_mutex_lock(&g_load_lock);
	if (g_tried) {
		int rc = g_load_rc;
		if (rc)
			scopy(t_err, sizeof(t_err), g_load_reason, NULL, NULL);
		pthread_mutex_unlock(&g_load_lock);
		return rc;
	}
	g_tried = true;
	const char *env = getenv("UHMM_CUDA_LIBRARY");
	const char *name = env && *env ? env : "libcuda.so.1";
	scopy(g_lib_name, sizeof(g_lib_name), name, NULL, NULL);
	void *lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		const char *why = dlerror();
		scopy(g_load_reason, sizeof(g_load_reason), "cannot load the CUDA driver: ",
		      why ? why : name, NULL);
		g_load_rc = -ENOENT;
		goto out;
	}
#define CU_LOAD_REQ(fname, sym, args) \
	*(void **)&D.fname = dlsym(lib, sym); \
	if (!D.fname) { \
		scopy(g_load_reason, sizeof(g_load_reason), name, " lacks " sym, \
		      " (driver too old: uhmm needs CUDA 10.2 or later)"); \
		g_load_rc = -ENOENT; \
		memset(&D, 0, sizeof(D)); \
		dlclose(lib); \
		goto out; \
	}
	CU_REQUIRED(CU_LOAD_REQ)
#define CU_LOAD_OPT(fname, sym, args) *(void **)&D.fname = dlsym(lib, sym);
	CU_OPTIONAL(CU_LOAD_OPT)
	g_lib = lib;
	CUresult r = D.cuInit(0);
	if (r != CUDA_SUCCESS) {
		cu_describe(g_load_reason, sizeof(g_load_reason), "cuInit", r);
		g_load_rc = cu_errno(r) == -ENOMEM ? -ENOMEM : -ENODEV;
		goto out;
	}
	int count = 0;
	r = D.cuDeviceGetCount(&count);
	if (r != CUDA_SUCCESS) {
		cu_describe(g_load_reason, sizeof(g_load_reason), "cuDeviceGetCount", r);
		g_load_rc = -ENODEV;
		goto out;
	}
	if (count <= 0) {
		scopy(g_load_reason, sizeof(g_load_reason), "the CUDA driver reports no GPU", NULL, NULL);
		g_load_rc = -ENODEV;
		goto out;
	}
	g_load_rc = 0;
	g_load_reason[0] = '\0';
out:
	if (g_load_rc)
		scopy(t_err, sizeof(t_err), g_load_reason, NULL, NULL);
	pthread_mutex_unlock(&g_load_lock);
	return g_load_rc;
}

static int cuda_info_fill(struct uhmm_cuda_info *out)
{
	memset(out, 0, sizeof(*out));
	int rc = cuda_load();
	scopy(out->library, sizeof(out->library), g_lib_name, NULL, NULL);
	scopy(out->reason, sizeof(out->reason), g_load_reason, NULL, NULL);
	if (!g_lib)
		return rc;
	/* The driver loaded: report what it says even if init failed. */
	if (D.cuDriverGetVersion(&out->driver_version) != CUDA_SUCCESS)
		out->driver_version = 0;
	if (rc)
		return rc;
	if (D.cuDeviceGetCount(&out->device_count) != CUDA_SUCCESS)
		out->device_count = 0;
	for (int i = 0; i < out->device_count && i < UHMM_CUDA_MAX_DEVICES; i++) {
		struct uhmm_cuda_device_info *di = &out->dev[i];
		CUdevice dev;
		if (D.cuDeviceGet(&dev, i) != CUDA_SUCCESS)
			continue;
		if (D.cuDeviceGetName(di->name, (int)sizeof(di->name) - 1, dev) != CUDA_SUCCESS)
			scopy(di->name, sizeof(di->name), "(unnamed)", NULL, NULL);
		size_t total = 0;
		if (D.cuDeviceTotalMem(&total, dev) == CUDA_SUCCESS)
			di->total_mem = total;
		D.cuDeviceGetAttribute(&di->cc_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
		D.cuDeviceGetAttribute(&di->cc_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
		D.cuDeviceGetAttribute(&di->vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev);
	}
	return 0;
}

UHMM_API int uhmm_cuda_available(struct uhmm_cuda_info *out)
{
	if (!out)
		return -EINVAL;
	long n = sized_check(out, CUDA_INFO_V1, CUDA_INFO_KNOWN);
	if (n < 0)
		return (int)n;
	/* Filled whole here, then only the caller's part copied out. */
	struct uhmm_cuda_info ci;
	int rc = cuda_info_fill(&ci);
	ci.sz = out->sz;
	memcpy(out, &ci, (size_t)n);
	return rc;
}

UHMM_API void *uhmm_cuda_driver_symbol(const char *name)
{
	if (!name || cuda_load() || !g_lib)
		return NULL;
	return dlsym(g_lib, name);
}

/* ------------------------------------------------------------------------
 * The device.
 * ---------------------------------------------------------------------- */

#define GRAN     ((size_t)UHMM_CUDA_GRANULE)
#define GPAGES   (GRAN / PAGE_SIZE)          /* pages per chunk / granule: 512 */
#define NPIECE   8                           /* copy pipeline depth */
#define PIECE    (GPAGES / NPIECE)           /* pages per pipelined piece */
#define NO_CHUNK UINT32_MAX
#define NDMA     4                           /* pinned buffers lent to the core */

struct chunk {
	CUmemGenericAllocationHandle handle;
	uint64_t bits[GPAGES / 64]; /* slot in use */
	uint32_t live;              /* slots in use */
	bool present;               /* physical memory allocated and mapped in the pool */
	struct vspace *mvs;         /* mirror granule mapping this chunk, if any */
	size_t mgran;
};

struct vspace {
	uintptr_t start, end;       /* the managed range it mirrors */
	CUdeviceptr base;
	size_t size;                /* reserved bytes (end - start rounded up to GRAN) */
	size_t ngran;
	uint32_t *map;              /* chunk mapped at each granule, or NO_CHUNK */
	size_t nmapped;
	bool dead;                  /* its range went away: reaped by the next prefetch */
	struct vspace *next;
};

struct module_ent {
	CUmodule mod;
	struct module_ent *next;
};

struct cuda_dev {
	struct uhmm_device *dev;
	struct uhmm_mirror *mirror;
	struct uhmm_devmem *mem;
	int ordinal;
	CUdevice cudev;
	CUcontext ctx;
	bool ctx_retained;
	CUstream stream;
	CUevent ev[NPIECE];
	char *pinned;               /* (1 + NDMA) * GRAN of pinned memory: our bounce
	                               buffer, then the buffers lent by dma_buf_get */
	_Atomic unsigned dma_busy;  /* lent buffers (bit i: pinned + (1 + i) * GRAN) */

	pthread_mutex_t lock;
	CUdeviceptr pool;           /* nchunks * GRAN reserved */
	size_t nchunks;
	struct chunk *chunks;
	size_t chunk_hint;
	size_t npages;              /* of the devmem block */
	uint32_t *slot_of;          /* devmem index -> slot + 1 (0 = none); lazily mapped */
	struct vspace *vspaces;
	struct module_ent *modules;

	_Atomic uint64_t bytes_to, bytes_from, compacted, mapped, unmapped, alloc_failures;
	_Atomic uint64_t physical;
	char err[256];
};

static int cuda_copy_to(struct uhmm_device *dev, struct uhmm_devmem *m, const size_t *idx,
                        const void *src, size_t npages);

static struct cuda_dev *cuda_of(const struct uhmm_device *d)
{
	if (!d || d->ops.copy_to_device != cuda_copy_to)
		return NULL;
	return d->priv;
}

UHMM_API int uhmm_cuda_is_cuda(const struct uhmm_device *d)
{
	return cuda_of(d) != NULL;
}

/* Record a failed driver call on the device; returns its errno. */
static int cu_fail(struct cuda_dev *b, const char *func, CUresult r)
{
	if (b)
		cu_describe(b->err, sizeof(b->err), func, r);
	else
		cu_describe(t_err, sizeof(t_err), func, r);
	if (r == CUDA_ERROR_OUT_OF_MEMORY && b)
		atomic_fetch_add(&b->alloc_failures, 1);
	return cu_errno(r);
}

static CUcontext ctx_enter(struct cuda_dev *b)
{
	CUcontext old = NULL;
	if (D.cuCtxGetCurrent(&old) != CUDA_SUCCESS)
		old = NULL;
	if (old != b->ctx)
		D.cuCtxSetCurrent(b->ctx);
	return old;
}

static void ctx_leave(struct cuda_dev *b, CUcontext old)
{
	if (old != b->ctx)
		D.cuCtxSetCurrent(old);
}

static CUmemAllocationProp alloc_prop(const struct cuda_dev *b)
{
	CUmemAllocationProp p;
	memset(&p, 0, sizeof(p));
	p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
	p.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
	p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	p.location.id = b->cudev;
	return p;
}

static int set_access(struct cuda_dev *b, CUdeviceptr va, size_t len)
{
	CUmemAccessDesc a;
	memset(&a, 0, sizeof(a));
	a.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	a.location.id = b->cudev;
	a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	CUresult r = D.cuMemSetAccess(va, len, &a, 1);
	return r ? cu_fail(b, "cuMemSetAccess", r) : 0;
}

static CUdeviceptr slot_addr(const struct cuda_dev *b, uint32_t slot)
{
	return b->pool + (CUdeviceptr)slot * PAGE_SIZE;
}

/* ---- chunks (lock held) ---- */

/* Allocate physical memory for chunk c and map it into the pool. */
static int chunk_populate(struct cuda_dev *b, size_t c)
{
	struct chunk *ch = &b->chunks[c];
	CUmemAllocationProp prop = alloc_prop(b);
	CUresult r = D.cuMemCreate(&ch->handle, GRAN, &prop, 0);
	if (r != CUDA_SUCCESS)
		return cu_fail(b, "cuMemCreate", r);
	CUdeviceptr va = b->pool + (CUdeviceptr)c * GRAN;
	r = D.cuMemMap(va, GRAN, 0, ch->handle, 0);
	if (r != CUDA_SUCCESS) {
		int e = cu_fail(b, "cuMemMap", r);
		D.cuMemRelease(ch->handle);
		return e;
	}
	int e = set_access(b, va, GRAN);
	if (e) {
		D.cuMemUnmap(va, GRAN);
		D.cuMemRelease(ch->handle);
		return e;
	}
	ch->present = true;
	memset(ch->bits, 0, sizeof(ch->bits));
	ch->live = 0;
	atomic_fetch_add(&b->physical, GRAN);
	return 0;
}

static bool chunk_empty(const struct chunk *ch)
{
	return ch->present && ch->live == 0 && !ch->mvs;
}

/* An empty chunk (reused, or new physical memory); its index or -errno. */
static long chunk_get_empty(struct cuda_dev *b)
{
	long absent = -1;
	for (size_t i = 0; i < b->nchunks; i++) {
		size_t c = (b->chunk_hint + i) % b->nchunks;
		if (chunk_empty(&b->chunks[c]))
			return (long)c;
		if (absent < 0 && !b->chunks[c].present)
			absent = (long)c;
	}
	if (absent < 0)
		return -ENOMEM;
	int e = chunk_populate(b, (size_t)absent);
	return e ? e : absent;
}

static void slot_take(struct cuda_dev *b, uint32_t slot)
{
	struct chunk *ch = &b->chunks[slot / GPAGES];
	ch->bits[(slot % GPAGES) / 64] |= 1ULL << (slot % 64);
	ch->live++;
}

/* Give a slot back.  A chunk mapped in a mirror that loses a page gets
 * unmapped first (normally the invalidation already did it). */
static void unmap_granule(struct cuda_dev *b, struct vspace *vs, size_t g);
static void slot_drop(struct cuda_dev *b, uint32_t slot)
{
	struct chunk *ch = &b->chunks[slot / GPAGES];
	if (ch->mvs)
		unmap_granule(b, ch->mvs, ch->mgran);
	ch->bits[(slot % GPAGES) / 64] &= ~(1ULL << (slot % 64));
	ch->live--;
}

/* One free slot anywhere (a present chunk first, then new memory). */
static int slot_alloc(struct cuda_dev *b, uint32_t *out)
{
	for (size_t i = 0; i < b->nchunks; i++) {
		size_t c = (b->chunk_hint + i) % b->nchunks;
		struct chunk *ch = &b->chunks[c];
		if (!ch->present || ch->live == GPAGES || ch->mvs)
			continue;
		for (size_t w = 0; w < GPAGES / 64; w++) {
			if (ch->bits[w] == ~0ULL)
				continue;
			unsigned bit = (unsigned)__builtin_ctzll(~ch->bits[w]);
			*out = (uint32_t)(c * GPAGES + w * 64 + bit);
			slot_take(b, *out);
			b->chunk_hint = c;
			return 0;
		}
	}
	long c = chunk_get_empty(b);
	if (c < 0)
		return (int)c;
	*out = (uint32_t)((size_t)c * GPAGES);
	slot_take(b, *out);
	b->chunk_hint = (size_t)c;
	return 0;
}

static uint32_t slot_get(const struct cuda_dev *b, size_t idx)
{
	return b->slot_of[idx]; /* slot + 1, 0 = none */
}

/* ---- copies ---- */

/* ops.dma_buf_get/put: lend the core a pinned buffer, so that it reads
 * migrating pages straight into memory the copy engines can reach and
 * installs returning pages straight from it (no bounce copy here).
 * Lock-free: called in signal handlers too. */
static void *cuda_dma_buf_get(struct uhmm_device *dev)
{
	struct cuda_dev *b = dev->priv;
	unsigned busy = atomic_load(&b->dma_busy);
	for (unsigned i = 0; i < NDMA; i++) {
		if (busy & (1u << i))
			continue;
		if (!(atomic_fetch_or(&b->dma_busy, 1u << i) & (1u << i)))
			return b->pinned + (1 + i) * GRAN;
	}
	return NULL;
}

static void cuda_dma_buf_put(struct uhmm_device *dev, void *buf)
{
	struct cuda_dev *b = dev->priv;
	size_t i = (size_t)((char *)buf - b->pinned) / GRAN - 1;
	atomic_fetch_and(&b->dma_busy, ~(1u << i));
}

/* Is [p, p + len) inside a lent buffer (pinned: the DMA can use it)? */
static bool is_dma_buf(const struct cuda_dev *b, const void *p, size_t len)
{
	const char *c = p;
	return c >= b->pinned + GRAN && c + len <= b->pinned + (1 + NDMA) * GRAN;
}

/* Queue copies of pages [i0, i1) of a call between their slots and
 * pinned host buffer buf (page i at buf + i pages), one copy per run of
 * consecutive slots. */
static int queue_copies(struct cuda_dev *b, char *buf, const size_t *idx, size_t i0, size_t i1,
                        bool to_dev)
{
	for (size_t i = i0; i < i1;) {
		uint32_t s = slot_get(b, idx[i]) - 1;
		size_t k = 1;
		while (i + k < i1 && slot_get(b, idx[i + k]) - 1 == s + k)
			k++;
		char *host = buf + i * PAGE_SIZE;
		CUresult r = to_dev ? D.cuMemcpyHtoDAsync(slot_addr(b, s), host, k * PAGE_SIZE, b->stream)
		                    : D.cuMemcpyDtoHAsync(host, slot_addr(b, s), k * PAGE_SIZE, b->stream);
		if (r != CUDA_SUCCESS)
			return cu_fail(b, to_dev ? "cuMemcpyHtoDAsync" : "cuMemcpyDtoHAsync", r);
		i += k;
	}
	return 0;
}

/*
 * Host -> GPU: slots for every page (a whole batch takes one empty chunk,
 * in order, so a granule migrated in one go needs no compaction), then
 * the data goes through the pinned buffer in pieces: the memcpy of piece
 * k+1 overlaps the DMA of piece k.
 */
static int cuda_copy_to(struct uhmm_device *dev, struct uhmm_devmem *m, const size_t *idx,
                        const void *src, size_t npages)
{
	struct cuda_dev *b = dev->priv;
	if (m != b->mem || npages > GPAGES)
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	CUcontext old = ctx_enter(b);
	int e = 0;
	size_t got = 0;
	/* A page index that still has a slot (should not happen): drop it. */
	for (size_t i = 0; i < npages; i++) {
		uint32_t s = slot_get(b, idx[i]);
		if (s) {
			slot_drop(b, s - 1);
			b->slot_of[idx[i]] = 0;
		}
	}
	if (npages == GPAGES) {
		long c = chunk_get_empty(b);
		if (c >= 0) {
			for (size_t i = 0; i < npages; i++) {
				uint32_t s = (uint32_t)((size_t)c * GPAGES + i);
				slot_take(b, s);
				b->slot_of[idx[i]] = s + 1;
			}
			got = npages;
		}
	}
	for (; got < npages; got++) {
		uint32_t s = 0;
		e = slot_alloc(b, &s);
		if (e)
			goto undo;
		b->slot_of[idx[got]] = s + 1;
	}
	if (is_dma_buf(b, src, npages * PAGE_SIZE)) {
		e = queue_copies(b, (char *)src, idx, 0, npages, true);
	} else {
		for (size_t i = 0; i < npages; i += PIECE) {
			size_t k = MIN(PIECE, npages - i);
			memcpy(b->pinned + i * PAGE_SIZE, (const char *)src + i * PAGE_SIZE,
			       k * PAGE_SIZE);
			e = queue_copies(b, b->pinned, idx, i, i + k, true);
			if (e)
				break;
		}
	}
	CUresult r = D.cuStreamSynchronize(b->stream);
	if (!e && r != CUDA_SUCCESS)
		e = cu_fail(b, "cuStreamSynchronize", r);
	if (!e) {
		atomic_fetch_add(&b->bytes_to, npages * PAGE_SIZE);
		goto out;
	}
undo:
	for (size_t i = 0; i < got; i++) {
		slot_drop(b, slot_get(b, idx[i]) - 1);
		b->slot_of[idx[i]] = 0;
	}
out:
	ctx_leave(b, old);
	pthread_mutex_unlock(&b->lock);
	return e;
}

/* GPU -> host: DMA every piece into the pinned buffer, then copy each
 * piece out as soon as its event says it arrived. */
static int cuda_copy_from(struct uhmm_device *dev, void *dst, struct uhmm_devmem *m,
                          const size_t *idx, size_t npages)
{
	struct cuda_dev *b = dev->priv;
	if (m != b->mem || npages > GPAGES)
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	CUcontext old = ctx_enter(b);
	int e = 0;
	size_t queued = 0;
	for (size_t i = 0; i < npages; i++)
		if (!slot_get(b, idx[i])) {
			scopy(b->err, sizeof(b->err), "copy_from_device: page has no GPU memory", NULL, NULL);
			e = -EIO;
			goto out;
		}
	if (is_dma_buf(b, dst, npages * PAGE_SIZE)) {
		e = queue_copies(b, dst, idx, 0, npages, false);
		CUresult r = D.cuStreamSynchronize(b->stream);
		if (!e && r != CUDA_SUCCESS)
			e = cu_fail(b, "cuStreamSynchronize", r);
		if (!e)
			atomic_fetch_add(&b->bytes_from, npages * PAGE_SIZE);
		goto out;
	}
	for (size_t i = 0, p = 0; i < npages; i += PIECE, p++) {
		size_t k = MIN(PIECE, npages - i);
		e = queue_copies(b, b->pinned, idx, i, i + k, false);
		if (e)
			break;
		CUresult r = D.cuEventRecord(b->ev[p], b->stream);
		if (r != CUDA_SUCCESS) {
			e = cu_fail(b, "cuEventRecord", r);
			break;
		}
		queued = i + k;
	}
	for (size_t i = 0, p = 0; !e && i < queued; i += PIECE, p++) {
		size_t k = MIN(PIECE, npages - i);
		CUresult r = D.cuEventSynchronize(b->ev[p]);
		if (r != CUDA_SUCCESS) {
			e = cu_fail(b, "cuEventSynchronize", r);
			break;
		}
		memcpy((char *)dst + i * PAGE_SIZE, b->pinned + i * PAGE_SIZE, k * PAGE_SIZE);
	}
	if (e)
		D.cuStreamSynchronize(b->stream); /* nothing in flight into pinned */
	else
		atomic_fetch_add(&b->bytes_from, npages * PAGE_SIZE);
out:
	ctx_leave(b, old);
	pthread_mutex_unlock(&b->lock);
	return e;
}

static void cuda_page_free(struct uhmm_device *dev, struct uhmm_devmem *m, size_t idx)
{
	struct cuda_dev *b = dev->priv;
	if (m != b->mem || idx >= b->npages)
		return;
	pthread_mutex_lock(&b->lock);
	uint32_t s = slot_get(b, idx);
	if (s) {
		/* A driver call only if the chunk is still mapped in a mirror. */
		bool mapped = b->chunks[(s - 1) / GPAGES].mvs != NULL;
		CUcontext old = mapped ? ctx_enter(b) : NULL;
		slot_drop(b, s - 1);
		b->slot_of[idx] = 0;
		if (mapped)
			ctx_leave(b, old);
	}
	pthread_mutex_unlock(&b->lock);
}

/* ---- mirrors ---- */

/* Lock held. */
static void unmap_granule(struct cuda_dev *b, struct vspace *vs, size_t g)
{
	uint32_t c = vs->map[g];
	if (c == NO_CHUNK)
		return;
	CUresult r = D.cuMemUnmap(vs->base + (CUdeviceptr)g * GRAN, GRAN);
	if (r != CUDA_SUCCESS)
		cu_fail(b, "cuMemUnmap", r);
	vs->map[g] = NO_CHUNK;
	vs->nmapped--;
	b->chunks[c].mvs = NULL;
	atomic_fetch_add(&b->unmapped, 1);
}

static void vspace_unmap_all(struct cuda_dev *b, struct vspace *vs)
{
	for (size_t g = 0; g < vs->ngran && vs->nmapped; g++)
		unmap_granule(b, vs, g);
}

static void cuda_invalidate(struct uhmm_mirror *mi, uintptr_t start, uintptr_t end,
                            enum uhmm_event ev)
{
	struct cuda_dev *b = uhmm_mirror_priv(mi);
	pthread_mutex_lock(&b->lock);
	CUcontext old = NULL;
	bool entered = false;
	for (struct vspace *vs = b->vspaces; vs; vs = vs->next) {
		if (vs->dead || end <= vs->start || start >= vs->end)
			continue;
		bool gone = (ev == UHMM_EVENT_UNMAP || ev == UHMM_EVENT_REMAP ||
		             ev == UHMM_EVENT_RANGE_REMOVE) &&
		            start <= vs->start && end >= vs->end;
		if (vs->nmapped) {
			if (!entered) {
				old = ctx_enter(b);
				entered = true;
			}
			size_t g0 = (MAX(start, vs->start) - vs->start) / GRAN;
			size_t g1 = (MIN(end, vs->end) - vs->start + GRAN - 1) / GRAN;
			for (size_t g = g0; g < g1 && vs->nmapped; g++)
				unmap_granule(b, vs, g);
		}
		/* The whole range went away: its GPU addresses are freed later
		 * (no allocator calls here: this may be a signal handler). */
		if (gone)
			vs->dead = true;
	}
	if (entered)
		ctx_leave(b, old);
	pthread_mutex_unlock(&b->lock);
}

/* Free dead vspaces (lock held; application thread). */
static void vspace_free(struct cuda_dev *b, struct vspace *vs)
{
	vspace_unmap_all(b, vs);
	D.cuMemAddressFree(vs->base, vs->size);
	free(vs->map);
	free(vs);
}

static void vspaces_reap(struct cuda_dev *b)
{
	for (struct vspace **pp = &b->vspaces; *pp;) {
		struct vspace *vs = *pp;
		if (vs->dead) {
			*pp = vs->next;
			vspace_free(b, vs);
		} else {
			pp = &vs->next;
		}
	}
}

/* The vspace mirroring [start, end) (the current managed range), creating
 * it.  A live vspace that contains it is reused (a range split by
 * uhmm_range_remove keeps its offsets); one that only overlaps it mirrors
 * memory that is gone, and is freed.  Lock held. */
static int vspace_get(struct cuda_dev *b, uintptr_t start, uintptr_t end, struct vspace **out)
{
	vspaces_reap(b);
	for (struct vspace **pp = &b->vspaces; *pp;) {
		struct vspace *vs = *pp;
		if (end <= vs->start || start >= vs->end) {
			pp = &vs->next;
			continue;
		}
		if (vs->start <= start && end <= vs->end) {
			*out = vs;
			return 0;
		}
		*pp = vs->next;
		vspace_free(b, vs);
	}
	struct vspace *vs = calloc(1, sizeof(*vs));
	if (!vs)
		return -ENOMEM;
	vs->start = start;
	vs->end = end;
	vs->size = (end - start + GRAN - 1) / GRAN * GRAN;
	vs->ngran = vs->size / GRAN;
	vs->map = malloc(vs->ngran * sizeof(*vs->map));
	if (!vs->map) {
		free(vs);
		return -ENOMEM;
	}
	for (size_t g = 0; g < vs->ngran; g++)
		vs->map[g] = NO_CHUNK;
	CUresult r = D.cuMemAddressReserve(&vs->base, vs->size, GRAN, 0, 0);
	if (r != CUDA_SUCCESS) {
		free(vs->map);
		free(vs);
		return cu_fail(b, "cuMemAddressReserve", r);
	}
	vs->next = b->vspaces;
	b->vspaces = vs;
	*out = vs;
	return 0;
}

UHMM_API uint64_t uhmm_cuda_ptr(struct uhmm_device *d, const void *p)
{
	struct cuda_dev *b = cuda_of(d);
	if (!b || !p)
		return 0;
	uintptr_t a = (uintptr_t)p;
	uint64_t ret = 0;
	pthread_mutex_lock(&b->lock);
	for (struct vspace *vs = b->vspaces; vs; vs = vs->next)
		if (!vs->dead && a >= vs->start && a < vs->end) {
			ret = vs->base + (a - vs->start);
			break;
		}
	pthread_mutex_unlock(&b->lock);
	return ret;
}

/* Result of trying to map one granule. */
enum { MAP_DONE, MAP_NOT_LOCAL, MAP_RETRY };

/*
 * Map granule g of vs if every page of it is on this GPU; line the pages
 * up in one chunk first if needed.  ent holds the snapshot of n pages
 * starting at page `off` of the granule (off > 0 only when the range was
 * split after its vspace was made).  Lock held, context current, no
 * invalidation since the snapshot.  Returns MAP_* or -errno.
 */
static int map_granule_locked(struct cuda_dev *b, struct vspace *vs, size_t g, size_t off,
                              const struct uhmm_range_entry *ent, size_t n)
{
	if (vs->map[g] != NO_CHUNK)
		return MAP_DONE;
	for (size_t i = 0; i < n; i++)
		if (!(ent[i].flags & UHMM_ENTRY_DEVICE_LOCAL) || ent[i].mem != b->mem ||
		    ent[i].index >= b->npages || !slot_get(b, ent[i].index))
			return MAP_NOT_LOCAL;
	uint32_t s0 = slot_get(b, ent[0].index) - 1;
	size_t c = s0 / GPAGES;
	bool in_place = s0 % GPAGES == off && !b->chunks[c].mvs;
	for (size_t i = 1; in_place && i < n; i++)
		in_place = slot_get(b, ent[i].index) - 1 == s0 + i;
	if (!in_place) {
		/* Compaction: copy the pages GPU-side into a fresh chunk, in
		 * granule order; their data never leaves the GPU. */
		long nc = chunk_get_empty(b);
		if (nc < 0)
			return (int)nc;
		c = (size_t)nc;
		int e = 0;
		for (size_t i = 0; i < n && !e;) {
			uint32_t s = slot_get(b, ent[i].index) - 1;
			size_t k = 1;
			while (i + k < n && slot_get(b, ent[i + k].index) - 1 == s + k)
				k++;
			CUresult r = D.cuMemcpyDtoDAsync(slot_addr(b, (uint32_t)(c * GPAGES + off + i)),
			                                 slot_addr(b, s), k * PAGE_SIZE, b->stream);
			if (r != CUDA_SUCCESS)
				e = cu_fail(b, "cuMemcpyDtoDAsync", r);
			i += k;
		}
		CUresult r = D.cuStreamSynchronize(b->stream);
		if (!e && r != CUDA_SUCCESS)
			e = cu_fail(b, "cuStreamSynchronize", r);
		if (e)
			return e; /* nothing changed: the pages keep their old slots */
		for (size_t i = 0; i < n; i++) {
			slot_drop(b, slot_get(b, ent[i].index) - 1);
			uint32_t s = (uint32_t)(c * GPAGES + off + i);
			slot_take(b, s);
			b->slot_of[ent[i].index] = s + 1;
		}
		atomic_fetch_add(&b->compacted, n);
	}
	CUdeviceptr va = vs->base + (CUdeviceptr)g * GRAN;
	CUresult r = D.cuMemMap(va, GRAN, 0, b->chunks[c].handle, 0);
	if (r != CUDA_SUCCESS)
		return cu_fail(b, "cuMemMap", r);
	int e = set_access(b, va, GRAN);
	if (e) {
		D.cuMemUnmap(va, GRAN);
		return e;
	}
	vs->map[g] = (uint32_t)c;
	vs->nmapped++;
	b->chunks[c].mvs = vs;
	b->chunks[c].mgran = g;
	atomic_fetch_add(&b->mapped, 1);
	return MAP_DONE;
}

/* Snapshot granule [ga, ga + n pages) and map it, with the retry protocol. */
static int map_granule(struct cuda_dev *b, uintptr_t rstart, uintptr_t rend, uintptr_t ga,
                       size_t n, struct uhmm_range_entry *ent)
{
	for (int tries = 0; tries < 100; tries++) {
		uint64_t seq = uhmm_mirror_read_begin(b->mirror);
		int r = uhmm_range_fault(b->mirror, (void *)ga, n, UHMM_RANGE_SNAPSHOT, ent);
		if (r)
			return r;
		pthread_mutex_lock(&b->lock);
		if (uhmm_mirror_read_retry(b->mirror, seq)) {
			pthread_mutex_unlock(&b->lock);
			continue;
		}
		struct vspace *vs;
		CUcontext old = ctx_enter(b);
		r = vspace_get(b, rstart, rend, &vs);
		if (!r)
			r = map_granule_locked(b, vs, (ga - vs->start) / GRAN,
			                       (ga - vs->start) % GRAN / PAGE_SIZE, ent, n);
		ctx_leave(b, old);
		pthread_mutex_unlock(&b->lock);
		return r;
	}
	return MAP_RETRY;
}

/* Is granule ga of the vspace starting at vstart mapped?  Then every page
 * of it is on this GPU (the invalidation of any change unmaps it first):
 * a prefetch has nothing to do there, and a launch checks residency at the
 * cost of a lookup instead of three passes over 512 page entries. */
static bool granule_mapped(struct cuda_dev *b, uintptr_t vstart, uintptr_t ga)
{
	bool yes = false;
	pthread_mutex_lock(&b->lock);
	for (struct vspace *vs = b->vspaces; vs; vs = vs->next)
		if (!vs->dead && vs->start == vstart) {
			yes = vs->map[(ga - vstart) / GRAN] != NO_CHUNK;
			break;
		}
	pthread_mutex_unlock(&b->lock);
	return yes;
}

/* Prefetch the granules of managed range [rs, re) that meet [a, e). */
static int prefetch_range(struct cuda_dev *b, uintptr_t rs, uintptr_t re, uintptr_t a,
                          uintptr_t e, struct uhmm_range_entry *ent,
                          struct uhmm_migrate_result *tot)
{
	struct uhmm *h = b->dev->h;
	int rc = 0;
	/* The vspace first, so uhmm_cuda_ptr works even if a granule fails. */
	pthread_mutex_lock(&b->lock);
	struct vspace *vs;
	CUcontext old = ctx_enter(b);
	int r = vspace_get(b, rs, re, &vs);
	uintptr_t vstart = r ? rs : vs->start;
	ctx_leave(b, old);
	pthread_mutex_unlock(&b->lock);
	if (r)
		return r;
	/* Granules count from the vspace's start (it may predate a split). */
	uintptr_t g0 = vstart + (a - vstart) / GRAN * GRAN;
	for (uintptr_t ga = g0; ga < e; ga += GRAN) {
		uintptr_t gs = MAX(ga, rs), ge = MIN(ga + GRAN, re);
		size_t n = (ge - gs) / PAGE_SIZE;
		int st = MAP_NOT_LOCAL;
		struct uhmm_migrate_result res = { 0, 0 };
		if (granule_mapped(b, vstart, ga)) {
			tot->migrated += n;
			continue;
		}
		for (int attempt = 0; attempt < 4 && st == MAP_NOT_LOCAL; attempt++) {
			/* Populate never-touched pages (a kernel may write them)
			 * and bring pages of other devices home. */
			r = uhmm_range_fault(b->mirror, (void *)gs, n, UHMM_RANGE_WRITE, ent);
			if (r == -EPERM)
				r = uhmm_range_fault(b->mirror, (void *)gs, n, UHMM_RANGE_READ, ent);
			if (r)
				return r;
			uint64_t fails = atomic_load(&b->alloc_failures);
			r = uhmm_migrate(h, (void *)gs, ge - gs, b->dev, &res);
			if (r)
				return r;
			if (res.skipped && atomic_load(&b->alloc_failures) != fails) {
				st = -ENOMEM;
				break;
			}
			if (res.skipped && uhmm_devmem_used(b->mem) + n > b->npages) {
				st = -ENOMEM; /* capacity reached */
				break;
			}
			st = map_granule(b, rs, re, gs, n, ent);
		}
		/* Count the granule once, by where its pages ended up. */
		if (st == MAP_DONE) {
			tot->migrated += n;
		} else {
			tot->migrated += res.migrated;
			tot->skipped += res.skipped ? res.skipped : n - MIN(n, res.migrated);
			if (!rc)
				rc = st == MAP_NOT_LOCAL || st == MAP_RETRY ? -EBUSY : st;
		}
	}
	return rc;
}

UHMM_API int uhmm_cuda_prefetch(struct uhmm_device *d, void *p, size_t len,
                                struct uhmm_migrate_result *res)
{
	struct cuda_dev *b = cuda_of(d);
	if (!b || !p || len == 0)
		return -EINVAL;
	uintptr_t a = (uintptr_t)p & ~PAGE_MASK;
	uintptr_t e = ((uintptr_t)p + len + PAGE_MASK) & ~PAGE_MASK;
	if (e <= a)
		return -EINVAL;
	struct uhmm *h = d->h;
	if (!range_covered(h, a, e, false))
		return -EINVAL;
	struct uhmm_range_entry *ent = malloc(GPAGES * sizeof(*ent));
	if (!ent)
		return -ENOMEM;
	struct uhmm_migrate_result tot = { 0, 0 };
	int rc = 0;
	for (uintptr_t cur = a; cur < e;) {
		struct range_ent r;
		unsigned tok = ebr_enter();
		bool found = range_lookup_managed(h, cur, &r);
		ebr_exit(tok);
		if (!found) {
			rc = -EINVAL; /* went away meanwhile */
			break;
		}
		uintptr_t ce = MIN(e, r.end);
		int x = prefetch_range(b, r.start, r.end, cur, ce, ent, &tot);
		if (x && !rc)
			rc = x;
		if (x && x != -ENOMEM && x != -EBUSY)
			break;
		cur = ce;
	}
	free(ent);
	if (res)
		*res = tot;
	return rc;
}

/* ---- kernels ---- */

UHMM_API int uhmm_cuda_function(struct uhmm_device *d, const void *image, const char *name,
                                void **function)
{
	struct cuda_dev *b = cuda_of(d);
	if (!b || !image || !name || !function)
		return -EINVAL;
	struct module_ent *me = malloc(sizeof(*me));
	if (!me)
		return -ENOMEM;
	pthread_mutex_lock(&b->lock);
	CUcontext old = ctx_enter(b);
	int e = 0;
	CUresult r = D.cuModuleLoadData(&me->mod, image);
	if (r != CUDA_SUCCESS) {
		e = cu_fail(b, "cuModuleLoadData", r);
		free(me);
		goto out;
	}
	CUfunction f = NULL;
	r = D.cuModuleGetFunction(&f, me->mod, name);
	if (r != CUDA_SUCCESS) {
		e = cu_fail(b, "cuModuleGetFunction", r);
		if (r == CUDA_ERROR_NOT_FOUND)
			e = -ENOENT;
		D.cuModuleUnload(me->mod);
		free(me);
		goto out;
	}
	me->next = b->modules;
	b->modules = me;
	*function = f;
out:
	ctx_leave(b, old);
	pthread_mutex_unlock(&b->lock);
	return e;
}

UHMM_API int uhmm_cuda_launch(struct uhmm_device *d, const struct uhmm_cuda_launch *l)
{
	struct cuda_dev *b = cuda_of(d);
	if (!b || !l)
		return -EINVAL;
	/* Fields past the caller's sz stay 0: their defaults. */
	struct uhmm_cuda_launch lc = { 0 };
	long n = sized_check(l, CUDA_LAUNCH_V1, CUDA_LAUNCH_KNOWN);
	if (n < 0)
		return (int)n;
	memcpy(&lc, l, (size_t)n);
	l = &lc;
	if (!l->function || (l->nuses && !l->uses))
		return -EINVAL;
	for (size_t i = 0; i < l->nuses; i++) {
		int r = uhmm_cuda_prefetch(d, l->uses[i].addr, l->uses[i].len, NULL);
		if (r)
			return r;
	}
	unsigned g[3], bl[3];
	for (int i = 0; i < 3; i++) {
		g[i] = l->grid[i] ? l->grid[i] : 1;
		bl[i] = l->block[i] ? l->block[i] : 1;
	}
	/* No lock: a launch is asynchronous and the driver serialises it. */
	CUcontext old = ctx_enter(b);
	CUresult r = D.cuLaunchKernel((CUfunction)l->function, g[0], g[1], g[2], bl[0], bl[1], bl[2],
	                              l->shared_mem, l->stream ? (CUstream)l->stream : b->stream,
	                              l->params, NULL);
	ctx_leave(b, old);
	if (r != CUDA_SUCCESS) {
		pthread_mutex_lock(&b->lock);
		int e = cu_fail(b, "cuLaunchKernel", r);
		pthread_mutex_unlock(&b->lock);
		return e;
	}
	return 0;
}

UHMM_API int uhmm_cuda_sync(struct uhmm_device *d)
{
	struct cuda_dev *b = cuda_of(d);
	if (!b)
		return -EINVAL;
	CUcontext old = ctx_enter(b);
	CUresult r = D.cuCtxSynchronize();
	ctx_leave(b, old);
	if (r != CUDA_SUCCESS) {
		pthread_mutex_lock(&b->lock);
		int e = cu_fail(b, "cuCtxSynchronize", r);
		pthread_mutex_unlock(&b->lock);
		return e;
	}
	return 0;
}

/* ---- diagnostics ---- */

UHMM_API const char *uhmm_cuda_last_error(const struct uhmm_device *d)
{
	struct cuda_dev *b = cuda_of(d);
	if (d && !b)
		return "not a CUDA device";
	return b ? b->err : t_err;
}

UHMM_API void *uhmm_cuda_context(const struct uhmm_device *d)
{
	struct cuda_dev *b = cuda_of(d);
	return b ? (void *)b->ctx : NULL;
}

UHMM_API void *uhmm_cuda_stream(const struct uhmm_device *d)
{
	struct cuda_dev *b = cuda_of(d);
	return b ? (void *)b->stream : NULL;
}

UHMM_API int uhmm_cuda_stats_get(struct uhmm_device *d, struct uhmm_cuda_stats *out)
{
	struct cuda_dev *b = cuda_of(d);
	if (!b || !out)
		return -EINVAL;
	long n = sized_check(out, CUDA_STATS_V1, CUDA_STATS_KNOWN);
	if (n < 0)
		return (int)n;
	struct uhmm_cuda_stats s = { .sz = out->sz };
	s.capacity = (uint64_t)b->npages * PAGE_SIZE;
	s.physical = atomic_load(&b->physical);
	s.bytes_to_device = atomic_load(&b->bytes_to);
	s.bytes_to_host = atomic_load(&b->bytes_from);
	s.pages_compacted = atomic_load(&b->compacted);
	s.granules_mapped = atomic_load(&b->mapped);
	s.granules_unmapped = atomic_load(&b->unmapped);
	s.alloc_failures = atomic_load(&b->alloc_failures);
	memcpy(out, &s, (size_t)n);
	return 0;
}

/* ---- creation and destruction ---- */

/* Release everything the backend holds (the core's objects are gone or
 * not made yet). */
static void cuda_free(struct cuda_dev *b)
{
	if (b->ctx) {
		CUcontext old = ctx_enter(b);
		if (b->stream)
			D.cuStreamSynchronize(b->stream);
		while (b->vspaces) {
			struct vspace *vs = b->vspaces;
			b->vspaces = vs->next;
			vspace_free(b, vs);
		}
		while (b->modules) {
			struct module_ent *me = b->modules;
			b->modules = me->next;
			D.cuModuleUnload(me->mod);
			free(me);
		}
		for (size_t c = 0; b->chunks && c < b->nchunks; c++) {
			struct chunk *ch = &b->chunks[c];
			if (!ch->present)
				continue;
			D.cuMemUnmap(b->pool + (CUdeviceptr)c * GRAN, GRAN);
			D.cuMemRelease(ch->handle);
		}
		if (b->pool)
			D.cuMemAddressFree(b->pool, b->nchunks * GRAN);
		for (int i = 0; i < NPIECE; i++)
			if (b->ev[i])
				D.cuEventDestroy(b->ev[i]);
		if (b->stream)
			D.cuStreamDestroy(b->stream);
		if (b->pinned)
			D.cuMemFreeHost(b->pinned);
		ctx_leave(b, old);
		if (b->ctx_retained) {
			if (D.cuDevicePrimaryCtxRelease)
				D.cuDevicePrimaryCtxRelease(b->cudev);
			else if (D.cuDevicePrimaryCtxRelease_v1)
				D.cuDevicePrimaryCtxRelease_v1(b->cudev);
		}
	}
	if (b->slot_of)
		munmap(b->slot_of, b->npages * sizeof(*b->slot_of));
	free(b->chunks);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

/* ops.destroy: the core evacuated every page and unregistered the mirror. */
static void cuda_destroy(struct uhmm_device *dev)
{
	struct cuda_dev *b = dev->priv;
	if (b)
		cuda_free(b);
}

static const struct uhmm_device_ops cuda_ops = {
	.copy_to_device = cuda_copy_to,
	.copy_from_device = cuda_copy_from,
	.page_free = cuda_page_free,
	.destroy = cuda_destroy,
	.dma_buf_get = cuda_dma_buf_get,
	.dma_buf_put = cuda_dma_buf_put,
};

static const struct uhmm_mirror_ops cuda_mirror_ops = {
	.invalidate = cuda_invalidate,
};

/* Driver-side setup of b (context, memory, stream); t_err says why not. */
static int cuda_setup(struct cuda_dev *b, const struct uhmm_cuda_options *opts)
{
	CUresult r = D.cuDeviceGet(&b->cudev, b->ordinal);
	if (r != CUDA_SUCCESS)
		return cu_fail(NULL, "cuDeviceGet", r);
	int vmm = 0;
	r = D.cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
	                           b->cudev);
	if (r != CUDA_SUCCESS || !vmm) {
		scopy(t_err, sizeof(t_err), "the GPU does not support virtual memory management "
		      "(cuMemCreate/cuMemMap)", NULL, NULL);
		return -EOPNOTSUPP;
	}
	CUmemAllocationProp prop = alloc_prop(b);
	size_t gran = 0;
	r = D.cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
	if (r != CUDA_SUCCESS)
		return cu_fail(NULL, "cuMemGetAllocationGranularity", r);
	if (gran == 0 || gran > GRAN || GRAN % gran) {
		scopy(t_err, sizeof(t_err), "the GPU's allocation granularity does not divide 2 MiB",
		      NULL, NULL);
		return -EOPNOTSUPP;
	}
	r = D.cuDevicePrimaryCtxRetain(&b->ctx, b->cudev);
	if (r != CUDA_SUCCESS) {
		b->ctx = NULL;
		return cu_fail(NULL, "cuDevicePrimaryCtxRetain", r);
	}
	b->ctx_retained = true;
	CUcontext old = ctx_enter(b);
	int e = 0;
	size_t cap = opts ? opts->capacity : 0;
	if (!cap) {
		size_t fr = 0, total = 0;
		r = D.cuMemGetInfo(&fr, &total);
		if (r != CUDA_SUCCESS) {
			e = cu_fail(NULL, "cuMemGetInfo", r);
			goto out;
		}
		size_t reserve = MAX(fr / 16, (size_t)256 << 20);
		cap = fr > reserve ? fr - reserve : 0;
	}
	cap = cap / GRAN * GRAN;
	if (cap < GRAN || cap / PAGE_SIZE > UINT32_MAX - 1) {
		scopy(t_err, sizeof(t_err), cap < GRAN ? "not enough free GPU memory (capacity < 2 MiB)"
		                                        : "capacity too large", NULL, NULL);
		e = cap < GRAN ? -ENOMEM : -EINVAL;
		goto out;
	}
	b->nchunks = cap / GRAN;
	b->npages = cap / PAGE_SIZE;
	b->chunks = calloc(b->nchunks, sizeof(*b->chunks));
	b->slot_of = mmap(NULL, b->npages * sizeof(*b->slot_of), PROT_READ | PROT_WRITE,
	                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (b->slot_of == MAP_FAILED)
		b->slot_of = NULL;
	if (!b->chunks || !b->slot_of) {
		scopy(t_err, sizeof(t_err), "out of host memory", NULL, NULL);
		e = -ENOMEM;
		goto out;
	}
	r = D.cuMemAddressReserve(&b->pool, b->nchunks * GRAN, GRAN, 0, 0);
	if (r != CUDA_SUCCESS) {
		b->pool = 0;
		e = cu_fail(NULL, "cuMemAddressReserve", r);
		goto out;
	}
	r = D.cuMemHostAlloc((void **)&b->pinned, (1 + NDMA) * GRAN, CU_MEMHOSTALLOC_PORTABLE);
	if (r != CUDA_SUCCESS) {
		b->pinned = NULL;
		e = cu_fail(NULL, "cuMemHostAlloc", r);
		goto out;
	}
	r = D.cuStreamCreate(&b->stream, CU_STREAM_NON_BLOCKING);
	if (r != CUDA_SUCCESS) {
		b->stream = NULL;
		e = cu_fail(NULL, "cuStreamCreate", r);
		goto out;
	}
	for (int i = 0; i < NPIECE; i++) {
		r = D.cuEventCreate(&b->ev[i], CU_EVENT_DISABLE_TIMING);
		if (r != CUDA_SUCCESS) {
			b->ev[i] = NULL;
			e = cu_fail(NULL, "cuEventCreate", r);
			goto out;
		}
	}
out:
	ctx_leave(b, old);
	return e;
}

UHMM_API int uhmm_cuda_create(struct uhmm *h, int ordinal, const struct uhmm_cuda_options *opts,
                              struct uhmm_device **out)
{
	struct uhmm_cuda_options oc = { 0 };
	if (opts) {
		/* Fields past the caller's sz stay 0: their defaults. */
		long n = sized_check(opts, CUDA_OPTIONS_V1, CUDA_OPTIONS_KNOWN);
		if (n < 0) {
			scopy(t_err, sizeof(t_err), "invalid argument (opts->sz)", NULL, NULL);
			return (int)n;
		}
		memcpy(&oc, opts, (size_t)n);
		opts = &oc;
	}
	if (!h || !out || ordinal < 0 || (opts && (opts->flags || opts->reserved))) {
		scopy(t_err, sizeof(t_err), "invalid argument", NULL, NULL);
		return -EINVAL;
	}
	t_err[0] = '\0';
	int e = cuda_load();
	if (e)
		return e;
	int count = 0;
	if (D.cuDeviceGetCount(&count) != CUDA_SUCCESS || ordinal >= count) {
		char num[16];
		snprintf(num, sizeof(num), "%d", ordinal);
		scopy(t_err, sizeof(t_err), "no CUDA device with ordinal ", num, NULL);
		return -ENODEV;
	}
	struct cuda_dev *b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	pthread_mutex_init(&b->lock, NULL);
	b->ordinal = ordinal;
	e = cuda_setup(b, opts);
	if (e) {
		cuda_free(b);
		return e;
	}
	char name[32];
	snprintf(name, sizeof(name), "cuda%d", ordinal);
	struct uhmm_device *dev;
	e = uhmm_device_create(h, name, &cuda_ops, 0, b, &dev);
	if (e) {
		cuda_free(b);
		return e;
	}
	b->dev = dev;
	e = uhmm_devmem_add(dev, b->npages * PAGE_SIZE,
	                    UHMM_DEVMEM_DEVICE | UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE,
	                    &b->mem);
	if (!e)
		e = uhmm_mirror_register(dev, &cuda_mirror_ops, b, &b->mirror);
	if (e) {
		scopy(t_err, sizeof(t_err), "registering the device with uhmm failed", NULL, NULL);
		uhmm_device_destroy(dev); /* calls cuda_destroy */
		return e;
	}
	*out = dev;
	return 0;
}
