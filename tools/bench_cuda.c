/* SPDX-License-Identifier: MIT */
/*
 * `uhmm bench --cuda`: the CUDA backend against the driver's own paths, on
 * the same GPU in the same run (docs/PERFORMANCE.md, "CUDA"):
 *
 *   cuda-migrate     uhmm_migrate host -> GPU and GPU -> host, and
 *                    uhmm_cuda_prefetch, vs cuMemcpyHtoD / cuMemcpyDtoH of
 *                    the same bytes from pinned host memory;
 *   cuda-fault-back  the CPU reads, sequentially, data a GPU kernel has just
 *                    written into uhmm memory (every page faults home) vs
 *                    the same on cuMemAllocManaged memory;
 *   cuda-saxpy       y = a*x + y over 1 GiB and 8 GiB (x and y together) on
 *                    uhmm-migrated memory (through uhmm_cuda_ptr) vs the same
 *                    kernel on cuMemAlloc memory; and through
 *                    uhmm_cuda_launch (the residency check included).
 *
 * The driver is the one uhmm loaded (uhmm_cuda_driver_symbol), so the
 * baselines and uhmm share one context.  Sizes are checked against the
 * GPU's free memory first, managed memory included: asking for more
 * managed memory than is free can hang a GPU.  Every case checks its data.
 * Without a usable driver the cases are skipped, with the reason.
 */
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "uhmm.h"
#include "uhmm_cuda.h"
#include "cli.h"
#include "bench.h"

#define PG  BENCH_PAGE
#define MIB (1ul << 20)
#define GIB (1ul << 30)

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

#define CU_MEM_ATTACH_GLOBAL 0x1

#include "cuda_kernels.h"

/* The driver entry points the baselines use (CUDA driver API, cuda.h). */
static struct {
	CUresult (*ctx_set)(void *);
	CUresult (*ctx_sync)(void);
	CUresult (*mem_info)(size_t *, size_t *);
	CUresult (*alloc)(CUdeviceptr *, size_t);
	CUresult (*free)(CUdeviceptr);
	CUresult (*alloc_managed)(CUdeviceptr *, size_t, unsigned);
	CUresult (*host_alloc)(void **, size_t, unsigned);
	CUresult (*free_host)(void *);
	CUresult (*htod)(CUdeviceptr, const void *, size_t);
	CUresult (*dtoh)(void *, CUdeviceptr, size_t);
	CUresult (*launch)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
	                   unsigned, void *, void **, void **);
	CUresult (*err_name)(CUresult, const char **);
} drv;

static int drv_load(const char *cname)
{
	static const struct { const char *name; size_t off; } syms[] = {
#define S(f, n) { n, offsetof(__typeof__(drv), f) }
		S(ctx_set, "cuCtxSetCurrent"),     S(ctx_sync, "cuCtxSynchronize"),
		S(mem_info, "cuMemGetInfo_v2"),    S(alloc, "cuMemAlloc_v2"),
		S(free, "cuMemFree_v2"),           S(alloc_managed, "cuMemAllocManaged"),
		S(host_alloc, "cuMemHostAlloc"),   S(free_host, "cuMemFreeHost"),
		S(htod, "cuMemcpyHtoD_v2"),        S(dtoh, "cuMemcpyDtoH_v2"),
		S(launch, "cuLaunchKernel"),       S(err_name, "cuGetErrorName"),
#undef S
	};
	for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
		void *f = uhmm_cuda_driver_symbol(syms[i].name);
		if (!f) {
			bench_error(cname, "the driver lacks %s", syms[i].name);
			return -1;
		}
		memcpy((char *)&drv + syms[i].off, &f, sizeof(f));
	}
	return 0;
}

static const char *cu_name(CUresult r)
{
	const char *s = NULL;
	if (drv.err_name && drv.err_name(r, &s) == 0 && s)
		return s;
	return "unknown CUDA error";
}

/* A driver call that must succeed; the case stops otherwise. */
#define CU(cname, call)                                                                    \
	({                                                                                 \
		CUresult r_ = (call);                                                      \
		if (r_)                                                                    \
			bench_error(cname, "%s: %s (%d)", #call, cu_name(r_), r_);        \
		r_;                                                                        \
	})

/* ---- a uhmm context with GPU 0 ---- */

struct gpu {
	struct uhmm *h;
	struct uhmm_device *d;
	void *fill, *saxpy; /* CUfunction */
	char label[24];
};

/* Once per run: is there a GPU?  The reason goes to the table when not. */
static bool gpu_present(const char *cname)
{
	static int checked, ok;
	if (!checked) {
		struct uhmm_cuda_info ci = UHMM_CUDA_INFO_INIT;
		checked = 1;
		ok = uhmm_cuda_available(&ci) == 0 && ci.device_count > 0;
		if (!ok)
			printf("%-18s skipped: no usable CUDA driver or GPU (%s)\n", cname,
			       ci.reason[0] ? ci.reason : "unknown reason");
		else
			printf("%-18s GPU 0: %s, %.1f GiB, compute capability %d.%d, driver %d.%d\n",
			       "cuda", ci.dev[0].name, (double)ci.dev[0].total_mem / (double)GIB,
			       ci.dev[0].cc_major, ci.dev[0].cc_minor, ci.driver_version / 1000,
			       ci.driver_version % 1000 / 10);
		fflush(stdout);
	}
	return ok;
}

static void gpu_close(const char *cname, struct gpu *g)
{
	if (!g->h)
		return;
	int r = uhmm_close(g->h);
	if (r)
		bench_error(cname, "uhmm_close: %s", strerror(-r));
	g->h = NULL;
}

static int gpu_open(const char *cname, struct gpu *g, enum uhmm_fault_mode mode, unsigned ahead)
{
	struct uhmm_options o = { .sz = sizeof(struct uhmm_options), .fault_mode = mode, .fault_ahead = ahead };
	int r;

	memset(g, 0, sizeof(*g));
	r = uhmm_open(&o, &g->h);
	if (r) {
		bench_error(cname, "uhmm_open: %s", strerror(-r));
		return -1;
	}
	r = uhmm_cuda_create(g->h, 0, NULL, &g->d);
	if (r) {
		bench_error(cname, "uhmm_cuda_create: %s (%s)", strerror(-r),
		            uhmm_cuda_last_error(NULL));
		goto fail;
	}
	if (drv_load(cname) || CU(cname, drv.ctx_set(uhmm_cuda_context(g->d))))
		goto fail;
	if ((r = uhmm_cuda_function(g->d, uhmm_kernels_ptx, "uhmm_fill", &g->fill)) ||
	    (r = uhmm_cuda_function(g->d, uhmm_kernels_ptx, "uhmm_saxpy", &g->saxpy))) {
		bench_error(cname, "uhmm_cuda_function: %s (%s)", strerror(-r),
		            uhmm_cuda_last_error(g->d));
		goto fail;
	}
	const char *m = uhmm_fault_mode(g->h) == UHMM_FAULT_SIGBUS ? "sigbus" : "thread";
	if (ahead)
		snprintf(g->label, sizeof(g->label), "%s, ahead %u", m, ahead);
	else
		snprintf(g->label, sizeof(g->label), "%s", m);
	return 0;
fail:
	gpu_close(cname, g);
	return -1;
}

/* Is `need` bytes of GPU memory free, with room to spare for uhmm's own? */
static bool gpu_room(const char *cname, size_t need)
{
	size_t fr = 0, tot = 0;
	if (CU(cname, drv.mem_info(&fr, &tot)))
		return false;
	if (need > fr / 10 * 8) {
		printf("%-18s skipped at this size: needs %zu MiB of GPU memory, %zu MiB free\n", cname,
		       need >> 20, fr >> 20);
		return false;
	}
	return true;
}

static int sync_gpu(const char *cname)
{
	return CU(cname, drv.ctx_sync()) ? -1 : 0;
}

static int launch_fill(const char *cname, struct gpu *g, CUdeviceptr p, uint32_t v, size_t bytes)
{
	uint64_t n = bytes / 4;
	void *params[] = { &p, &v, &n };
	if (CU(cname, drv.launch(g->fill, (unsigned)((n + 255) / 256), 1, 1, 256, 1, 1, 0, NULL,
	                         params, NULL)))
		return -1;
	return sync_gpu(cname);
}

/* Managed host memory, `len` bytes, 2 MiB aligned (GPU residency granule). */
static char *managed_map(const char *cname, struct gpu *g, size_t len)
{
	size_t ml = len + UHMM_CUDA_GRANULE;
	char *m = mmap(NULL, ml, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
	               -1, 0);
	if (m == MAP_FAILED) {
		bench_error(cname, "mmap %zu bytes: %s", len, strerror(errno));
		return NULL;
	}
	char *p = (char *)(((uintptr_t)m + UHMM_CUDA_GRANULE - 1) & ~(uintptr_t)(UHMM_CUDA_GRANULE - 1));
	if (p > m)
		munmap(m, (size_t)(p - m));
	if (p + len < m + ml)
		munmap(p + len, (size_t)(m + ml - (p + len)));
	(void)g;
	return p;
}

static int managed_add(const char *cname, struct gpu *g, char *p, size_t len)
{
	int r = uhmm_range_add(g->h, p, len);
	if (r) {
		bench_error(cname, "uhmm_range_add: %s", strerror(-r));
		munmap(p, len);
		return -1;
	}
	return 0;
}

static void managed_unmap(const char *cname, struct gpu *g, char *p, size_t len)
{
	if (!p)
		return;
	int r = uhmm_free(g->h, p, len);
	if (r) {
		bench_error(cname, "uhmm_free: %s", strerror(-r));
		munmap(p, len);
	}
}

static inline uint64_t pat(size_t i)
{
	return ((uint64_t)i + 1) * UINT64_C(0x9e3779b97f4a7c15);
}

static double gbps(size_t bytes, double s)
{
	return s > 0 ? (double)bytes / s / 1e9 : 0;
}

static size_t bad_words(const uint64_t *p, size_t n, uint64_t (*want)(size_t, uint64_t),
                        uint64_t arg)
{
	size_t bad = 0;
	for (size_t i = 0; i < n; i++)
		bad += p[i] != want(i, arg);
	return bad;
}

static uint64_t want_pat(size_t i, uint64_t arg)
{
	(void)arg;
	return pat(i);
}

static uint64_t want_fill(size_t i, uint64_t v)
{
	(void)i;
	return v << 32 | v;
}

static int migrate_all(const char *cname, struct gpu *g, char *p, size_t len,
                       struct uhmm_device *to)
{
	struct uhmm_migrate_result res = { 0, 0 };
	int r = uhmm_migrate(g->h, p, len, to, &res);
	if (r || res.migrated != len / PG) {
		bench_error(cname, "uhmm_migrate(%s): %s, %zu of %zu pages moved (%zu skipped)",
		            to ? "GPU" : "host", r ? strerror(-r) : "ok", res.migrated, len / PG,
		            res.skipped);
		return -1;
	}
	return 0;
}

static int prefetch_all(const char *cname, struct gpu *g, void *p, size_t len)
{
	struct uhmm_migrate_result res = { 0, 0 };
	int r = uhmm_cuda_prefetch(g->d, p, len, &res);
	if (r) {
		bench_error(cname, "uhmm_cuda_prefetch: %s (%s), %zu skipped", strerror(-r),
		            uhmm_cuda_last_error(g->d), res.skipped);
		return -1;
	}
	return 0;
}

/* ---- cuda-migrate ---- */

#define MT 4 /* threads of the parallel migration rows */

struct mt_arg {
	const char *cname;
	struct gpu *g;
	char *p;
	size_t len;
	struct uhmm_device *to;
	int rc;
};

static void *mt_main(void *a)
{
	struct mt_arg *m = a;
	m->rc = migrate_all(m->cname, m->g, m->p, m->len, m->to);
	return NULL;
}

/* MT threads migrate a part of [p, p + len) each; seconds, < 0 failed. */
static double migrate_mt(const char *cname, struct gpu *g, char *p, size_t len,
                         struct uhmm_device *to)
{
	struct mt_arg a[MT];
	pthread_t t[MT];
	size_t part = len / MT / UHMM_CUDA_GRANULE * UHMM_CUDA_GRANULE;
	int rc = 0, started = 0;
	double t0 = now_s();
	for (int i = 0; i < MT; i++) {
		size_t off = (size_t)i * part;
		a[i] = (struct mt_arg){ cname, g, p + off, i == MT - 1 ? len - off : part, to, 0 };
		if (pthread_create(&t[i], NULL, mt_main, &a[i])) {
			bench_error(cname, "pthread_create failed");
			rc = -1;
			break;
		}
		started++;
	}
	for (int i = 0; i < started; i++) {
		pthread_join(t[i], NULL);
		rc |= a[i].rc;
	}
	return rc ? -1 : now_s() - t0;
}

int case_cuda_migrate(void)
{
	const char *cname = "cuda-migrate";
	const size_t len = bopt.size, n = len / 8;
	struct gpu g;
	char *p = NULL;
	uint64_t *host = NULL;
	char *pageable = NULL;
	CUdeviceptr dbuf = 0;
	int ret = -1;

	if (!gpu_present(cname))
		return 0;
	if (gpu_open(cname, &g, UHMM_FAULT_AUTO, 0))
		return -1;
	/* uhmm's copy and the baseline's buffer: twice the size. */
	if (!gpu_room(cname, 2 * len)) {
		gpu_close(cname, &g);
		return 0;
	}
	if (CU(cname, drv.host_alloc((void **)&host, len, 0)) || CU(cname, drv.alloc(&dbuf, len)))
		goto out;
	if (!(p = managed_map(cname, &g, len)))
		goto out;
	for (size_t i = 0; i < n; i++)
		((uint64_t *)p)[i] = host[i] = pat(i);
	if (managed_add(cname, &g, p, len)) {
		p = NULL;
		goto out;
	}
	/* The driver's own path from memory it did not allocate (plain pages,
	 * like uhmm's): staged through its pinned buffers. */
	pageable = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pageable == MAP_FAILED) {
		pageable = NULL;
		bench_error(cname, "mmap %zu bytes: %s", len, strerror(errno));
		goto out;
	}
	memcpy(pageable, host, len);

	struct row *to = row_new(cname, "host->GPU migrate", U_GBPS, "cuMemcpyHtoD pinned");
	struct row *pf = row_new(cname, "host->GPU prefetch", U_GBPS, "cuMemcpyHtoD pinned");
	struct row *back = row_new(cname, "GPU->host migrate", U_GBPS, "cuMemcpyDtoH pinned");
	struct row *pg = row_new(cname, "host->GPU migrate", U_GBPS, "cuMemcpyHtoD pageable");
	struct row *pgb = row_new(cname, "GPU->host migrate", U_GBPS, "cuMemcpyDtoH pageable");
	struct row *mto = row_new(cname, "host->GPU 4 threads", U_GBPS, "cuMemcpyHtoD pinned");
	struct row *mback = row_new(cname, "GPU->host 4 threads", U_GBPS, "cuMemcpyDtoH pinned");
	progress(cname, g.label, -1, bopt.reps);
	/* Warm-up: GPU chunks created, staging buffers and page tables built. */
	if (migrate_all(cname, &g, p, len, g.d) || migrate_all(cname, &g, p, len, NULL) ||
	    CU(cname, drv.htod(dbuf, host, len)) || CU(cname, drv.dtoh(host, dbuf, len)))
		goto out_rows;
	for (int rep = 0; rep < bopt.reps; rep++) {
		double t;
		progress(cname, g.label, rep, bopt.reps);
		t = now_s();
		if (migrate_all(cname, &g, p, len, g.d))
			goto out_rows;
		series_add(&to->val, gbps(len, now_s() - t));
		t = now_s();
		if (CU(cname, drv.htod(dbuf, host, len)))
			goto out_rows;
		series_add(&to->base, gbps(len, now_s() - t));
		series_add(&pf->base, to->base.v[to->base.n - 1]);

		t = now_s();
		if (migrate_all(cname, &g, p, len, NULL))
			goto out_rows;
		series_add(&back->val, gbps(len, now_s() - t));
		t = now_s();
		if (CU(cname, drv.dtoh(host, dbuf, len)))
			goto out_rows;
		series_add(&back->base, gbps(len, now_s() - t));

		/* Prefetch = migrate + map into the mirror; home again after. */
		t = now_s();
		if (prefetch_all(cname, &g, p, len))
			goto out_rows;
		series_add(&pf->val, gbps(len, now_s() - t));
		if (migrate_all(cname, &g, p, len, NULL))
			goto out_rows;

		/* Pageable baselines, against this repetition's uhmm figures. */
		t = now_s();
		if (CU(cname, drv.htod(dbuf, pageable, len)))
			goto out_rows;
		series_add(&pg->base, gbps(len, now_s() - t));
		series_add(&pg->val, to->val.v[to->val.n - 1]);
		t = now_s();
		if (CU(cname, drv.dtoh(pageable, dbuf, len)))
			goto out_rows;
		series_add(&pgb->base, gbps(len, now_s() - t));
		series_add(&pgb->val, back->val.v[back->val.n - 1]);

		/* The same migration split over MT threads. */
		if ((t = migrate_mt(cname, &g, p, len, g.d)) < 0)
			goto out_rows;
		series_add(&mto->val, gbps(len, t));
		series_add(&mto->base, to->base.v[to->base.n - 1]);
		if ((t = migrate_mt(cname, &g, p, len, NULL)) < 0)
			goto out_rows;
		series_add(&mback->val, gbps(len, t));
		series_add(&mback->base, back->base.v[back->base.n - 1]);
	}
	size_t bad = bad_words((uint64_t *)p, n, want_pat, 0);
	size_t badb = bad_words(host, n, want_pat, 0) + bad_words((uint64_t *)pageable, n, want_pat, 0);
	if (bad || badb)
		bench_error(cname, "%zu words wrong after the round trips (%zu in the baseline)", bad,
		            badb);
	else
		ret = 0;
out_rows:
	snprintf(to->note, sizeof(to->note), "%s mode, %zu MiB per call", g.label, len >> 20);
	row_finish(to, CMP_GE, 0.9, false);
	row_finish(back, CMP_GE, 0.9, false);
	snprintf(pf->note, sizeof(pf->note), "uhmm_cuda_prefetch: migration + mapping into the mirror");
	row_finish(pf, CMP_GE, 0.9, true);
	row_finish(pg, CMP_GE, 0.9, true);
	row_finish(pgb, CMP_GE, 0.9, true);
	snprintf(mto->note, sizeof(mto->note), "%d threads, one uhmm_migrate of a quarter each", MT);
	row_finish(mto, CMP_GE, 0.9, true);
	row_finish(mback, CMP_GE, 0.9, true);
out:
	if (pageable)
		munmap(pageable, len);
	managed_unmap(cname, &g, p, len);
	if (dbuf)
		drv.free(dbuf);
	if (host)
		drv.free_host(host);
	gpu_close(cname, &g);
	return ret;
}

/* ---- cuda-fault-back ---- */

/* The CPU reads one word of every page, in order: each page faults home. */
static double read_pages(const char *p, size_t len, uint64_t *sum)
{
	uint64_t s = 0;
	double t = now_s();
	for (size_t off = 0; off < len; off += PG)
		s += *(const volatile uint64_t *)(p + off);
	t = now_s() - t;
	*sum = s;
	return t;
}

static int fault_back_mode(const char *cname, enum uhmm_fault_mode mode, unsigned ahead)
{
	const size_t len = bopt.size;
	struct gpu g;
	char *p = NULL;
	CUdeviceptr m = 0;
	int ret = -1;
	uint32_t v = 0;

	if (gpu_open(cname, &g, mode, ahead))
		return -1;
	if (!gpu_room(cname, 2 * len)) {
		gpu_close(cname, &g);
		return 0;
	}
	if (CU(cname, drv.alloc_managed(&m, len, CU_MEM_ATTACH_GLOBAL)))
		goto out;
	if (!(p = managed_map(cname, &g, len)))
		goto out;
	memset(p, 0, len);
	if (managed_add(cname, &g, p, len)) {
		p = NULL;
		goto out;
	}
	struct row *r = row_new(cname, g.label, U_MS, "cuMemAllocManaged");
	for (int rep = -1; rep < bopt.reps; rep++) { /* rep -1: warm-up */
		uint64_t sum;
		double t;
		progress(cname, g.label, rep, bopt.reps);
		v = 0x51d00000u + (uint32_t)(rep + 1);
		/* uhmm: resident on the GPU, written there by a kernel. */
		if (prefetch_all(cname, &g, p, len) ||
		    launch_fill(cname, &g, uhmm_cuda_ptr(g.d, p), v, len))
			goto out_row;
		t = read_pages(p, len, &sum);
		if (sum != (uint64_t)(len / PG) * want_fill(0, v)) {
			bench_error(cname, "uhmm: the CPU read data the kernel did not write");
			goto out_row;
		}
		if (rep >= 0)
			series_add(&r->val, t * 1e3);
		/* Managed memory: the kernel's writes pull it to the GPU. */
		if (launch_fill(cname, &g, m, v, len))
			goto out_row;
		t = read_pages((const char *)(uintptr_t)m, len, &sum);
		if (sum != (uint64_t)(len / PG) * want_fill(0, v)) {
			bench_error(cname, "managed memory: the CPU read data the kernel did not write");
			goto out_row;
		}
		if (rep >= 0)
			series_add(&r->base, t * 1e3);
	}
	size_t bad = bad_words((uint64_t *)p, len / 8, want_fill, v);
	if (bad)
		bench_error(cname, "%zu words of uhmm memory wrong after the last kernel", bad);
	else
		ret = 0;
out_row:
	snprintf(r->note, sizeof(r->note),
	         "%zu MiB written by a GPU kernel, then one CPU read per page in order", len >> 20);
	if (ahead)
		snprintf(r->note, sizeof(r->note),
		         "the same with fault-ahead: %u granules of 2 MiB brought home in the background",
		         ahead);
	row_finish(r, CMP_LE, 1.0, false);
out:
	managed_unmap(cname, &g, p, len);
	if (m)
		drv.free(m);
	gpu_close(cname, &g);
	return ret;
}

int case_cuda_fault_back(void)
{
	if (!gpu_present("cuda-fault-back"))
		return 0;
	int r = 0;
	for (unsigned ahead = 0; ahead <= 8; ahead += 4) {
		r |= fault_back_mode("cuda-fault-back", UHMM_FAULT_THREAD, ahead);
		r |= fault_back_mode("cuda-fault-back", UHMM_FAULT_SIGBUS, ahead);
	}
	return r;
}

/* ---- cuda-saxpy ---- */

static float x_of(size_t i)
{
	return (float)(i & 1023);
}

static int saxpy_launch(const char *cname, struct gpu *g, CUdeviceptr x, CUdeviceptr y, size_t n)
{
	float a = 2.0f;
	uint64_t nn = n;
	void *params[] = { &x, &y, &a, &nn };
	if (CU(cname, drv.launch(g->saxpy, (unsigned)((n + 255) / 256), 1, 1, 256, 1, 1, 0, NULL,
	                         params, NULL)))
		return -1;
	return sync_gpu(cname);
}

static int saxpy_helper(const char *cname, struct gpu *g, float *x, float *y, size_t n)
{
	float a = 2.0f;
	uint64_t nn = n;
	CUdeviceptr dx = uhmm_cuda_ptr(g->d, x), dy = uhmm_cuda_ptr(g->d, y);
	void *params[] = { &dx, &dy, &a, &nn };
	struct uhmm_cuda_span uses[2] = { { x, n * 4 }, { y, n * 4 } };
	struct uhmm_cuda_launch l;
	memset(&l, 0, sizeof(l));
	l.sz = sizeof(l);
	l.function = g->saxpy;
	l.grid[0] = (unsigned)((n + 255) / 256);
	l.block[0] = 256;
	l.params = params;
	l.uses = uses;
	l.nuses = 2;
	int r = uhmm_cuda_launch(g->d, &l);
	if (r) {
		bench_error(cname, "uhmm_cuda_launch: %s (%s)", strerror(-r), uhmm_cuda_last_error(g->d));
		return -1;
	}
	return sync_gpu(cname);
}

/* y must hold 1 + k * 2 * x (exact in float: x < 1024, k small). */
static size_t saxpy_bad(const float *y, size_t n, int k)
{
	size_t bad = 0;
	for (size_t i = 0; i < n; i++)
		bad += y[i] != 1.0f + (float)k * 2.0f * x_of(i);
	return bad;
}

static int saxpy_size(const char *cname, size_t total)
{
	const size_t vlen = total / 2, n = vlen / 4;
	struct gpu g;
	float *x = NULL, *y = NULL, *chk = NULL;
	bool xa = false, ya = false; /* managed by uhmm yet */
	CUdeviceptr dx = 0, dy = 0;
	int ret = -1, k = 0, kb = 0;
	char var[32];

	if (gpu_open(cname, &g, UHMM_FAULT_AUTO, 0))
		return -1;
	if (!gpu_room(cname, 2 * total)) {
		gpu_close(cname, &g);
		return 0;
	}
	if (!(x = (float *)managed_map(cname, &g, vlen)) || !(y = (float *)managed_map(cname, &g, vlen)))
		goto out;
	for (size_t i = 0; i < n; i++) {
		x[i] = x_of(i);
		y[i] = 1.0f;
	}
	/* The baseline's copy of the same data, before uhmm manages it. */
	if (CU(cname, drv.alloc(&dx, vlen)) || CU(cname, drv.alloc(&dy, vlen)) ||
	    CU(cname, drv.htod(dx, x, vlen)) || CU(cname, drv.htod(dy, y, vlen)))
		goto out;
	if (managed_add(cname, &g, (char *)x, vlen)) {
		x = NULL;
		goto out;
	}
	xa = true;
	if (managed_add(cname, &g, (char *)y, vlen)) {
		y = NULL;
		goto out;
	}
	ya = true;
	if (prefetch_all(cname, &g, x, vlen) || prefetch_all(cname, &g, y, vlen))
		goto out;

	snprintf(var, sizeof(var), "%zu MiB kernel", total >> 20);
	struct row *r = row_new(cname, var, U_GBPS, "cuMemAlloc");
	snprintf(var, sizeof(var), "%zu MiB launch helper", total >> 20);
	struct row *rl = row_new(cname, var, U_GBPS, "cuMemAlloc");
	CUdeviceptr ux = uhmm_cuda_ptr(g.d, x), uy = uhmm_cuda_ptr(g.d, y);
	const size_t bytes = 3 * vlen; /* x read, y read and written */
	for (int rep = -1; rep < bopt.reps; rep++) {
		double t, tb;
		progress(cname, var, rep, bopt.reps);
		t = now_s();
		if (saxpy_launch(cname, &g, ux, uy, n))
			goto out_rows;
		t = now_s() - t;
		k++;
		tb = now_s();
		if (saxpy_launch(cname, &g, dx, dy, n))
			goto out_rows;
		tb = now_s() - tb;
		kb++;
		double th = now_s();
		if (saxpy_helper(cname, &g, x, y, n))
			goto out_rows;
		th = now_s() - th;
		k++;
		if (rep >= 0) {
			series_add(&r->val, gbps(bytes, t));
			series_add(&r->base, gbps(bytes, tb));
			series_add(&rl->val, gbps(bytes, th));
			series_add(&rl->base, gbps(bytes, tb));
		}
	}
	/* Checks: the CPU reads y (it faults home), the baseline is copied back. */
	size_t bad = saxpy_bad(y, n, k);
	size_t cn = n < (64 * MIB) / 4 ? n : (64 * MIB) / 4;
	if (!(chk = malloc(cn * 4)) || CU(cname, drv.dtoh(chk, dy, cn * 4)))
		goto out_rows;
	size_t badb = saxpy_bad(chk, cn, kb);
	if (bad || badb)
		bench_error(cname, "%zu of %zu results wrong (baseline: %zu of %zu)", bad, n, badb, cn);
	else
		ret = 0;
out_rows:
	snprintf(r->note, sizeof(r->note),
	         "y = 2x + y, %zu M floats per vector; GB/s = 3 x %zu MiB / kernel time", n >> 20,
	         vlen >> 20);
	row_finish(r, CMP_GE, 0.95, false);
	snprintf(rl->note, sizeof(rl->note), "uhmm_cuda_launch: the residency check of x and y included");
	row_finish(rl, CMP_GE, 0.95, true);
out:
	free(chk);
	if (dx)
		drv.free(dx);
	if (dy)
		drv.free(dy);
	if (x)
		xa ? managed_unmap(cname, &g, (char *)x, vlen) : (void)munmap(x, vlen);
	if (y)
		ya ? managed_unmap(cname, &g, (char *)y, vlen) : (void)munmap(y, vlen);
	gpu_close(cname, &g);
	return ret;
}

int case_cuda_saxpy(void)
{
	const char *cname = "cuda-saxpy";
	if (!gpu_present(cname))
		return 0;
	if (bopt.quick)
		return saxpy_size(cname, 16 * MIB);
	int r = saxpy_size(cname, GIB);
	return saxpy_size(cname, 8 * GIB) | r;
}
