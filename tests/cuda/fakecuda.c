/* SPDX-License-Identifier: MIT */
/*
 * fakecuda: a simulated CUDA driver (the subset uhmm's backend and its
 * tests use) over host memory, loaded through UHMM_CUDA_LIBRARY so the
 * backend's logic runs on machines without a GPU.  It is strict where the
 * real driver is: device memory (cuMemCreate) is a memfd that cuMemMap maps
 * into a reserved range PROT_NONE until cuMemSetAccess; copies and kernels
 * check that every byte they touch is mapped and accessible and fail with
 * CUDA_ERROR_INVALID_VALUE otherwise (a real GPU would fault); calls that
 * need a context fail without one current on the calling thread.
 *
 * Simulated GPU: one device, "uhmm fake GPU", FAKECUDA_MEM_MB MiB
 * (default 256), granularity 2 MiB.  FAKECUDA_INIT_ERROR=<n> makes cuInit
 * return error n.  Two kernels exist, in any module image that mentions
 * uhmm_fill (the tests' and the benchmark's PTX do): uhmm_fill(u32 *p,
 * u32 value, u64 n) and uhmm_saxpy(f32 *x, f32 *y, f32 a, u64 n).
 * Managed memory (cuMemAllocManaged) is plain device memory here: host
 * memory both sides can touch, which is all a simulation can offer.
 *
 * Not a model of timing or of asynchrony: every "async" call completes
 * before it returns.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;

typedef struct { int type; int id; } CUmemLocation;
typedef struct {
	int type;
	int requestedHandleTypes;
	CUmemLocation location;
	void *win32HandleMetaData;
	struct { unsigned char a, b; unsigned short c; unsigned char r[4]; } allocFlags;
} CUmemAllocationProp;
typedef struct { CUmemLocation location; int flags; } CUmemAccessDesc;

enum {
	OK = 0, E_INVALID_VALUE = 1, E_OUT_OF_MEMORY = 2, E_NOT_INITIALIZED = 3,
	E_NO_DEVICE = 100, E_INVALID_DEVICE = 101, E_INVALID_IMAGE = 200,
	E_INVALID_CONTEXT = 201, E_NOT_FOUND = 500,
};

#define GRAN (2UL << 20)

static pthread_mutex_t lk = PTHREAD_MUTEX_INITIALIZER;
static int inited;
static size_t total_mem, used_mem;
static struct CUctx_st { int refs; } primary;
static __thread CUcontext current;

struct phys { int fd; size_t size; int maps; int released; };

/* Every device virtual region: cuMemMap mappings and cuMemAlloc blocks. */
struct region { uintptr_t va; size_t size; struct phys *ph; int access; int alloc; };
#define MAX_REGIONS 65536
static struct region regions[MAX_REGIONS];
static int nregions;

static size_t env_num(const char *name, size_t def)
{
	const char *s = getenv(name);
	return s && *s ? (size_t)strtoull(s, NULL, 0) : def;
}

API CUresult cuInit(unsigned flags)
{
	if (flags)
		return E_INVALID_VALUE;
	size_t err = env_num("FAKECUDA_INIT_ERROR", 0);
	if (err)
		return (CUresult)err;
	pthread_mutex_lock(&lk);
	inited = 1;
	total_mem = env_num("FAKECUDA_MEM_MB", 256) << 20;
	pthread_mutex_unlock(&lk);
	return OK;
}

API CUresult cuDriverGetVersion(int *v) { *v = 12040; return OK; }
API CUresult cuDeviceGetCount(int *n) { if (!inited) return E_NOT_INITIALIZED; *n = 1; return OK; }
API CUresult cuDeviceGet(CUdevice *d, int ord)
{
	if (!inited)
		return E_NOT_INITIALIZED;
	if (ord != 0)
		return E_INVALID_DEVICE;
	*d = 0;
	return OK;
}
API CUresult cuDeviceGetName(char *name, int len, CUdevice d)
{
	if (d != 0 || len <= 0)
		return E_INVALID_VALUE;
	snprintf(name, (size_t)len, "uhmm fake GPU");
	return OK;
}
API CUresult cuDeviceTotalMem_v2(size_t *b, CUdevice d) { (void)d; *b = total_mem; return OK; }
API CUresult cuDeviceGetAttribute(int *v, int attr, CUdevice d)
{
	(void)d;
	*v = attr == 75 ? 9 : attr == 76 ? 0 : attr == 102 ? 1 : 0;
	return OK;
}
API CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d)
{
	if (!inited || d != 0)
		return E_INVALID_DEVICE;
	pthread_mutex_lock(&lk);
	primary.refs++;
	pthread_mutex_unlock(&lk);
	*c = &primary;
	return OK;
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d)
{
	(void)d;
	pthread_mutex_lock(&lk);
	int bad = primary.refs <= 0;
	if (!bad)
		primary.refs--;
	pthread_mutex_unlock(&lk);
	return bad ? E_INVALID_CONTEXT : OK;
}
API CUresult cuCtxSetCurrent(CUcontext c) { current = c; return OK; }
API CUresult cuCtxGetCurrent(CUcontext *c) { *c = current; return OK; }
#define NEED_CTX() do { if (current != &primary || primary.refs <= 0) return E_INVALID_CONTEXT; } while (0)
API CUresult cuCtxSynchronize(void) { NEED_CTX(); return OK; }
API CUresult cuMemGetInfo_v2(size_t *fr, size_t *tot)
{
	NEED_CTX();
	pthread_mutex_lock(&lk);
	*fr = total_mem - used_mem;
	*tot = total_mem;
	pthread_mutex_unlock(&lk);
	return OK;
}

/* ---- virtual memory management ---- */

API CUresult cuMemGetAllocationGranularity(size_t *g, const CUmemAllocationProp *p, int opt)
{
	(void)opt;
	if (!p || p->type != 1 || p->location.type != 1)
		return E_INVALID_VALUE;
	*g = GRAN;
	return OK;
}

API CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t size, const CUmemAllocationProp *p,
                         unsigned long long flags)
{
	if (!inited)
		return E_NOT_INITIALIZED;
	if (!h || !p || flags || size == 0 || size % GRAN || p->type != 1 || p->location.type != 1 ||
	    p->location.id != 0 || p->requestedHandleTypes != 0)
		return E_INVALID_VALUE;
	pthread_mutex_lock(&lk);
	if (used_mem + size > total_mem) {
		pthread_mutex_unlock(&lk);
		return E_OUT_OF_MEMORY;
	}
	used_mem += size;
	pthread_mutex_unlock(&lk);
	struct phys *ph = calloc(1, sizeof(*ph));
	int fd = memfd_create("fakecuda", MFD_CLOEXEC);
	if (!ph || fd < 0 || ftruncate(fd, (off_t)size)) {
		if (fd >= 0)
			close(fd);
		free(ph);
		pthread_mutex_lock(&lk);
		used_mem -= size;
		pthread_mutex_unlock(&lk);
		return E_OUT_OF_MEMORY;
	}
	ph->fd = fd;
	ph->size = size;
	*h = (CUmemGenericAllocationHandle)(uintptr_t)ph;
	return OK;
}

static void phys_put(struct phys *ph) /* lk held */
{
	if (ph->released && ph->maps == 0) {
		close(ph->fd);
		used_mem -= ph->size;
		free(ph);
	}
}

API CUresult cuMemRelease(CUmemGenericAllocationHandle h)
{
	struct phys *ph = (struct phys *)(uintptr_t)h;
	if (!ph || ph->released)
		return E_INVALID_VALUE;
	pthread_mutex_lock(&lk);
	ph->released = 1;
	phys_put(ph);
	pthread_mutex_unlock(&lk);
	return OK;
}

API CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t align, CUdeviceptr addr,
                                 unsigned long long flags)
{
	(void)addr;
	if (!ptr || size == 0 || size % GRAN || flags || (align && align % GRAN))
		return E_INVALID_VALUE;
	if (!align)
		align = GRAN;
	char *m = mmap(NULL, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		return E_OUT_OF_MEMORY;
	uintptr_t a = ((uintptr_t)m + align - 1) & ~(align - 1);
	if (a > (uintptr_t)m)
		munmap(m, a - (uintptr_t)m);
	uintptr_t tail = (uintptr_t)m + size + align - (a + size);
	if (tail)
		munmap((void *)(a + size), tail);
	*ptr = a;
	return OK;
}

static int find_region(uintptr_t va) /* lk held */
{
	for (int i = 0; i < nregions; i++)
		if (regions[i].va == va)
			return i;
	return -1;
}

static int overlaps_region(uintptr_t va, size_t size) /* lk held */
{
	for (int i = 0; i < nregions; i++)
		if (va < regions[i].va + regions[i].size && regions[i].va < va + size)
			return 1;
	return 0;
}

API CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
	pthread_mutex_lock(&lk);
	int busy = overlaps_region(ptr, size);
	pthread_mutex_unlock(&lk);
	if (busy)
		return E_INVALID_VALUE; /* still mapped: the real driver refuses too */
	munmap((void *)(uintptr_t)ptr, size);
	return OK;
}

API CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle h,
                      unsigned long long flags)
{
	struct phys *ph = (struct phys *)(uintptr_t)h;
	if (!ph || flags || ptr % GRAN || size % GRAN || offset % GRAN || offset + size > ph->size ||
	    ph->released)
		return E_INVALID_VALUE;
	pthread_mutex_lock(&lk);
	if (overlaps_region(ptr, size) || nregions == MAX_REGIONS) {
		pthread_mutex_unlock(&lk);
		return E_INVALID_VALUE; /* already mapped */
	}
	void *m = mmap((void *)(uintptr_t)ptr, size, PROT_NONE, MAP_SHARED | MAP_FIXED, ph->fd,
	               (off_t)offset);
	if (m == MAP_FAILED) {
		pthread_mutex_unlock(&lk);
		return E_OUT_OF_MEMORY;
	}
	regions[nregions++] = (struct region){ ptr, size, ph, 0, 0 };
	ph->maps++;
	pthread_mutex_unlock(&lk);
	return OK;
}

API CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
	pthread_mutex_lock(&lk);
	int i = find_region(ptr);
	if (i < 0 || regions[i].size != size || regions[i].alloc) {
		pthread_mutex_unlock(&lk);
		return E_INVALID_VALUE;
	}
	mmap((void *)(uintptr_t)ptr, size, PROT_NONE,
	     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
	struct phys *ph = regions[i].ph;
	regions[i] = regions[--nregions];
	ph->maps--;
	phys_put(ph);
	pthread_mutex_unlock(&lk);
	return OK;
}

API CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *d, size_t count)
{
	if (!d || count != 1 || d->location.type != 1 || d->location.id != 0 || d->flags != 3)
		return E_INVALID_VALUE;
	pthread_mutex_lock(&lk);
	int i = find_region(ptr);
	if (i < 0 || regions[i].size != size) {
		pthread_mutex_unlock(&lk);
		return E_INVALID_VALUE;
	}
	mprotect((void *)(uintptr_t)ptr, size, PROT_READ | PROT_WRITE);
	regions[i].access = 1;
	pthread_mutex_unlock(&lk);
	return OK;
}

/* Is [va, va + n) device memory that is mapped and accessible? */
static int accessible(uintptr_t va, size_t n)
{
	pthread_mutex_lock(&lk);
	while (n) {
		int hit = 0;
		for (int i = 0; i < nregions; i++) {
			struct region *r = &regions[i];
			if (va >= r->va && va < r->va + r->size) {
				if (!r->access)
					break;
				size_t k = r->va + r->size - va;
				if (k > n)
					k = n;
				va += k;
				n -= k;
				hit = 1;
				break;
			}
		}
		if (!hit) {
			pthread_mutex_unlock(&lk);
			return 0;
		}
	}
	pthread_mutex_unlock(&lk);
	return 1;
}

/* ---- classic allocations (the tests fill the GPU with these) ---- */

API CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t size)
{
	NEED_CTX();
	size_t sz = (size + GRAN - 1) / GRAN * GRAN;
	if (!size)
		return E_INVALID_VALUE;
	pthread_mutex_lock(&lk);
	if (used_mem + sz > total_mem || nregions == MAX_REGIONS) {
		pthread_mutex_unlock(&lk);
		return E_OUT_OF_MEMORY;
	}
	void *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
	               -1, 0);
	if (m == MAP_FAILED) {
		pthread_mutex_unlock(&lk);
		return E_OUT_OF_MEMORY;
	}
	used_mem += sz;
	regions[nregions++] = (struct region){ (uintptr_t)m, sz, NULL, 1, 1 };
	pthread_mutex_unlock(&lk);
	*p = (uintptr_t)m;
	return OK;
}

API CUresult cuMemFree_v2(CUdeviceptr p)
{
	NEED_CTX();
	pthread_mutex_lock(&lk);
	int i = find_region(p);
	if (i < 0 || !regions[i].alloc) {
		pthread_mutex_unlock(&lk);
		return E_INVALID_VALUE;
	}
	munmap((void *)(uintptr_t)p, regions[i].size);
	used_mem -= regions[i].size;
	regions[i] = regions[--nregions];
	pthread_mutex_unlock(&lk);
	return OK;
}

/* Managed memory: one address for host and device, which host memory is. */
API CUresult cuMemAllocManaged(CUdeviceptr *p, size_t size, unsigned flags)
{
	if (flags != 1 && flags != 2) /* CU_MEM_ATTACH_GLOBAL, CU_MEM_ATTACH_HOST */
		return E_INVALID_VALUE;
	return cuMemAlloc_v2(p, size);
}

API CUresult cuMemHostAlloc(void **pp, size_t size, unsigned flags)
{
	(void)flags;
	NEED_CTX();
	return posix_memalign(pp, 4096, size) ? E_OUT_OF_MEMORY : OK;
}
API CUresult cuMemFreeHost(void *p) { free(p); return OK; }

/* ---- copies (synchronous underneath) ---- */

API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s)
{
	(void)s;
	NEED_CTX();
	if (!accessible(dst, n))
		return E_INVALID_VALUE;
	memcpy((void *)(uintptr_t)dst, src, n);
	return OK;
}
API CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s)
{
	(void)s;
	NEED_CTX();
	if (!accessible(src, n))
		return E_INVALID_VALUE;
	memcpy(dst, (const void *)(uintptr_t)src, n);
	return OK;
}
API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
	(void)s;
	NEED_CTX();
	if (!accessible(dst, n) || !accessible(src, n))
		return E_INVALID_VALUE;
	memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
	return OK;
}
API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n)
{
	return cuMemcpyHtoDAsync_v2(dst, src, n, NULL);
}
API CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n)
{
	return cuMemcpyDtoHAsync_v2(dst, src, n, NULL);
}
API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
	return cuMemcpyDtoDAsync_v2(dst, src, n, NULL);
}
API CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned v, size_t n)
{
	NEED_CTX();
	if (!accessible(dst, n * 4))
		return E_INVALID_VALUE;
	for (size_t i = 0; i < n; i++)
		((uint32_t *)(uintptr_t)dst)[i] = v;
	return OK;
}

/* ---- streams and events ---- */

struct CUstream_st { int x; };
struct CUevent_st { int x; };
API CUresult cuStreamCreate(CUstream *s, unsigned flags)
{
	(void)flags;
	NEED_CTX();
	*s = calloc(1, sizeof(**s));
	return *s ? OK : E_OUT_OF_MEMORY;
}
API CUresult cuStreamDestroy_v2(CUstream s) { free(s); return OK; }
API CUresult cuStreamSynchronize(CUstream s) { (void)s; NEED_CTX(); return OK; }
API CUresult cuEventCreate(CUevent *e, unsigned flags)
{
	(void)flags;
	NEED_CTX();
	*e = calloc(1, sizeof(**e));
	return *e ? OK : E_OUT_OF_MEMORY;
}
API CUresult cuEventDestroy_v2(CUevent e) { free(e); return OK; }
API CUresult cuEventRecord(CUevent e, CUstream s) { (void)e; (void)s; NEED_CTX(); return OK; }
API CUresult cuEventSynchronize(CUevent e) { (void)e; return OK; }

/* ---- modules and the one kernel ---- */

struct CUmod_st { int x; };
struct CUfunc_st { int x; };
static struct CUfunc_st fill_fn, saxpy_fn;

API CUresult cuModuleLoadData(CUmodule *m, const void *image)
{
	NEED_CTX();
	if (!image || !strstr((const char *)image, "uhmm_fill"))
		return E_INVALID_IMAGE;
	*m = calloc(1, sizeof(**m));
	return *m ? OK : E_OUT_OF_MEMORY;
}
API CUresult cuModuleUnload(CUmodule m) { free(m); return OK; }
API CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name)
{
	if (!m || !name)
		return E_INVALID_VALUE;
	if (!strcmp(name, "uhmm_fill"))
		*f = &fill_fn;
	else if (!strcmp(name, "uhmm_saxpy"))
		*f = &saxpy_fn;
	else
		return E_NOT_FOUND;
	return OK;
}
API CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz, unsigned shm, CUstream s, void **params,
                            void **extra)
{
	(void)shm;
	(void)s;
	(void)extra;
	NEED_CTX();
	if ((f != &fill_fn && f != &saxpy_fn) || !params)
		return E_INVALID_VALUE;
	uint64_t threads = (uint64_t)gx * gy * gz * bx * by * bz;
	if (f == &saxpy_fn) {
		CUdeviceptr x = *(CUdeviceptr *)params[0], y = *(CUdeviceptr *)params[1];
		float a = *(float *)params[2];
		uint64_t n = *(uint64_t *)params[3];
		if (n > threads)
			n = threads;
		if (!accessible(x, n * 4) || !accessible(y, n * 4))
			return 700; /* CUDA_ERROR_ILLEGAL_ADDRESS */
		for (uint64_t i = 0; i < n; i++)
			((float *)(uintptr_t)y)[i] += a * ((float *)(uintptr_t)x)[i];
		return OK;
	}
	CUdeviceptr p = *(CUdeviceptr *)params[0];
	uint32_t v = *(uint32_t *)params[1];
	uint64_t n = *(uint64_t *)params[2];
	if (n > threads)
		n = threads;
	if (!accessible(p, n * 4))
		return 700; /* CUDA_ERROR_ILLEGAL_ADDRESS */
	for (uint64_t i = 0; i < n; i++)
		((uint32_t *)(uintptr_t)p)[i] = v;
	return OK;
}

/* ---- errors ---- */

static const struct { int code; const char *name, *text; } errs[] = {
	{ 0, "CUDA_SUCCESS", "no error" },
	{ 1, "CUDA_ERROR_INVALID_VALUE", "invalid argument" },
	{ 2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory" },
	{ 3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error" },
	{ 100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected" },
	{ 101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal" },
	{ 200, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid" },
	{ 201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context" },
	{ 500, "CUDA_ERROR_NOT_FOUND", "named symbol not found" },
	{ 700, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered" },
};

API CUresult cuGetErrorName(CUresult r, const char **s)
{
	for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++)
		if (errs[i].code == r) {
			*s = errs[i].name;
			return OK;
		}
	return E_INVALID_VALUE;
}
API CUresult cuGetErrorString(CUresult r, const char **s)
{
	for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++)
		if (errs[i].code == r) {
			*s = errs[i].text;
			return OK;
		}
	return E_INVALID_VALUE;
}
