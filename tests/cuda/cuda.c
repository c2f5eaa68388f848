/* SPDX-License-Identifier: MIT */
/*
 * The CUDA backend.
 *
 * Without a usable driver (libcuda.so.1 missing, cuInit failing, no GPU)
 * the failure paths are checked and every GPU test is skipped with the
 * reason.  With a driver (a real GPU, or the simulated driver fakecuda
 * loaded through UHMM_CUDA_LIBRARY) the GPU tests run: migration both ways
 * with data checks, prefetch + GPU-side writes through uhmm_cuda_ptr,
 * compaction of scattered pages, the launch helper, and a full GPU.
 *
 * UHMM_CUDA_TEST_EXPECT=absent|present makes a run fail instead of skip
 * when the driver is not in the state the run is for (meson sets it for
 * the no-driver and simulated-driver runs).
 */
#include "../common.h"
#include "uhmm_cuda.h"
#include "cuda_kernels.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef CUresult (*ctx_set_fn)(void *);
typedef CUresult (*ctx_sync_fn)(void);
typedef CUresult (*dtoh_fn)(void *, CUdeviceptr, size_t);
typedef CUresult (*dtod_fn)(CUdeviceptr, CUdeviceptr, size_t);
typedef CUresult (*memset32_fn)(CUdeviceptr, unsigned, size_t);
typedef CUresult (*meminfo_fn)(size_t *, size_t *);
typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);
typedef CUresult (*free_fn)(CUdeviceptr);

#define GP (UHMM_CUDA_GRANULE / 4096) /* pages per granule (4 KiB pages) */

static struct uhmm_cuda_info g_info;
static int g_rc;

static const char *expect(void)
{
	const char *e = getenv("UHMM_CUDA_TEST_EXPECT");
	return e ? e : "";
}

static int group_setup(void **state)
{
	(void)state;
	g_info.sz = sizeof(g_info);
	g_rc = uhmm_cuda_available(&g_info);
	if (g_rc)
		print_message("CUDA: not available (%s): %s\n", strerror(-g_rc), g_info.reason);
	else
		print_message("CUDA: driver %d.%d, %d GPU(s), first: %s\n", g_info.driver_version / 1000,
		              g_info.driver_version % 1000 / 10, g_info.device_count, g_info.dev[0].name);
	return 0;
}

/* Skip (with the reason) unless a GPU is usable. */
#define NEED_GPU()                                                                      \
	do {                                                                            \
		if (g_rc) {                                                             \
			if (strcmp(expect(), "present") == 0)                           \
				fail_msg("a CUDA driver was expected: %s", g_info.reason); \
			print_message("skipped: no usable CUDA GPU: %s\n", g_info.reason); \
			skip();                                                         \
		}                                                                       \
	} while (0)

static void *sym(const char *name)
{
	void *f = uhmm_cuda_driver_symbol(name);
	assert_non_null(f);
	return f;
}

static struct uhmm_device *t_cuda(struct uhmm *h, size_t capacity)
{
	struct uhmm_cuda_options o = { .sz = sizeof(struct uhmm_cuda_options), .capacity = capacity, .flags = 0 };
	struct uhmm_device *d = NULL;
	int rc = uhmm_cuda_create(h, 0, &o, &d);
	if (rc)
		fail_msg("uhmm_cuda_create: %s (%s)", strerror(-rc), uhmm_cuda_last_error(NULL));
	assert_non_null(d);
	assert_true(uhmm_cuda_is_cuda(d));
	assert_non_null(uhmm_cuda_context(d));
	/* Driver calls from the test need the device's context current. */
	assert_int_equal(((ctx_set_fn)sym("cuCtxSetCurrent"))(uhmm_cuda_context(d)), 0);
	return d;
}

static struct uhmm_cuda_stats cstats(struct uhmm_device *d)
{
	struct uhmm_cuda_stats s = UHMM_CUDA_STATS_INIT;
	assert_int_equal(uhmm_cuda_stats_get(d, &s), 0);
	return s;
}

/* Copy n pages at GPU address dp into a fresh buffer. */
static void *gpu_read(uint64_t dp, size_t n)
{
	void *buf = malloc(n * PS());
	assert_non_null(buf);
	CUresult r = ((dtoh_fn)sym("cuMemcpyDtoH_v2"))(buf, dp, n * PS());
	assert_int_equal(r, 0);
	return buf;
}

/* ---- without a driver ---- */

static void cuda_available_reports(void **state)
{
	(void)state;
	struct uhmm_cuda_info i = UHMM_CUDA_INFO_INIT;
	assert_int_equal(uhmm_cuda_available(NULL), -EINVAL);
	int rc = uhmm_cuda_available(&i);
	assert_int_equal(rc, g_rc); /* stable */
	assert_true(i.library[0] != '\0');
	if (strcmp(expect(), "absent") == 0)
		assert_int_not_equal(rc, 0);
	if (strcmp(expect(), "present") == 0 && rc)
		fail_msg("a CUDA driver was expected: %s", i.reason);
	if (rc) {
		assert_true(rc == -ENOENT || rc == -ENODEV);
		assert_true(i.reason[0] != '\0');
		assert_int_equal(i.device_count, 0);
		assert_true(uhmm_cuda_last_error(NULL)[0] != '\0');
		assert_null(uhmm_cuda_driver_symbol("cuInit"));
		return;
	}
	assert_string_equal(i.reason, "");
	assert_true(i.driver_version > 0);
	assert_true(i.device_count >= 1);
	for (int k = 0; k < i.device_count && k < UHMM_CUDA_MAX_DEVICES; k++) {
		assert_true(i.dev[k].name[0] != '\0');
		assert_true(i.dev[k].total_mem > 0);
	}
}

static void cuda_create_unavailable(void **state)
{
	if (!g_rc) {
		print_message("skipped: a driver is present (the no-driver run covers this)\n");
		skip();
	}
	struct uhmm *h = t_open(state);
	for (int k = 0; k < 50; k++) {
		struct uhmm_device *d = NULL;
		struct uhmm_cuda_options o = { .sz = sizeof(struct uhmm_cuda_options), .capacity = 64 << 20, .flags = 0 };
		assert_int_equal(uhmm_cuda_create(h, 0, k % 2 ? &o : NULL, &d), g_rc);
		assert_null(d);
		assert_true(uhmm_cuda_last_error(NULL)[0] != '\0');
	}
	/* The context is unharmed: another device still works. */
	struct uhmm_device *dm = t_dummy(h);
	void *p = t_alloc(h, 8);
	fill_pages(p, 0, 8, 1);
	assert_migrate(h, p, 8 * PS(), dm, 8, 0);
	assert_pages(p, 0, 8, 1);
	t_close(h);
}

static void cuda_bad_args(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = NULL;
	struct uhmm_cuda_options bad = { .sz = sizeof(struct uhmm_cuda_options), .capacity = 0, .flags = 1 };
	assert_int_equal(uhmm_cuda_create(NULL, 0, NULL, &d), -EINVAL);
	assert_int_equal(uhmm_cuda_create(h, 0, NULL, NULL), -EINVAL);
	assert_int_equal(uhmm_cuda_create(h, -1, NULL, &d), -EINVAL);
	assert_int_equal(uhmm_cuda_create(h, 0, &bad, &d), -EINVAL);
	assert_null(d);

	void *p = t_alloc(h, 4);
	struct uhmm_device *dm = t_dummy(h);
	assert_false(uhmm_cuda_is_cuda(NULL));
	assert_false(uhmm_cuda_is_cuda(dm));
	assert_int_equal(uhmm_cuda_ptr(NULL, p), 0);
	assert_int_equal(uhmm_cuda_ptr(dm, p), 0);
	assert_int_equal(uhmm_cuda_prefetch(NULL, p, PS(), NULL), -EINVAL);
	assert_int_equal(uhmm_cuda_prefetch(dm, p, PS(), NULL), -EINVAL);
	assert_int_equal(uhmm_cuda_sync(NULL), -EINVAL);
	assert_int_equal(uhmm_cuda_sync(dm), -EINVAL);
	struct uhmm_cuda_stats st = UHMM_CUDA_STATS_INIT;
	assert_int_equal(uhmm_cuda_stats_get(NULL, &st), -EINVAL);
	assert_int_equal(uhmm_cuda_stats_get(dm, &st), -EINVAL);
	struct uhmm_cuda_launch l;
	memset(&l, 0, sizeof(l));
	l.sz = sizeof(l);
	assert_int_equal(uhmm_cuda_launch(NULL, &l), -EINVAL);
	void *fn = NULL;
	assert_int_equal(uhmm_cuda_function(dm, uhmm_kernels_ptx, "uhmm_fill", &fn), -EINVAL);
	assert_null(uhmm_cuda_context(dm));
	assert_null(uhmm_cuda_stream(NULL));
	assert_non_null(uhmm_cuda_last_error(dm));
	assert_null(uhmm_cuda_driver_symbol(NULL));

	if (!g_rc) {
		assert_int_equal(uhmm_cuda_create(h, 1000, NULL, &d), -ENODEV);
		d = t_cuda(h, 16 << 20);
		void *q = t_mmap(4);
		assert_int_equal(uhmm_cuda_prefetch(d, NULL, PS(), NULL), -EINVAL);
		assert_int_equal(uhmm_cuda_prefetch(d, p, 0, NULL), -EINVAL);
		assert_int_equal(uhmm_cuda_prefetch(d, q, PS(), NULL), -EINVAL); /* not managed */
		assert_int_equal(uhmm_cuda_prefetch(d, p, 5 * PS(), NULL), -EINVAL); /* runs past */
		assert_int_equal(uhmm_cuda_launch(d, &l), -EINVAL); /* no function */
		assert_int_equal(uhmm_cuda_function(d, uhmm_kernels_ptx, NULL, &fn), -EINVAL);
		assert_int_equal(uhmm_cuda_ptr(d, q), 0);
		munmap(q, 4 * PS());
		assert_int_equal(uhmm_device_destroy(d), 0);
	}
	t_close(h);
}

/* ---- with a GPU ---- */

static void cuda_migrate_both_ways(void **state)
{
	NEED_GPU();
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_cuda(h, 64 << 20);
	const size_t n = 2 * GP + 3;
	void *p = t_alloc(h, n);

	fill_pages(p, 0, n, 1);
	assert_migrate(h, p, n * PS(), d, n, 0);
	assert_states(h, p, 0, n, UHMM_STATE_DEVICE, d);
	assert_true(cstats(d).bytes_to_device >= n * PS());
	/* CPU faults bring it home page by page (granule by granule). */
	assert_pages(p, 0, n, 1);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	assert_true(cstats(d).bytes_to_host >= n * PS());

	/* Explicit migration back. */
	fill_pages(p, 0, n, 2);
	assert_migrate(h, p, n * PS(), d, n, 0);
	assert_migrate(h, p, n * PS(), NULL, n, 0);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, n, 2);

	/* A CPU write to a GPU-resident page is not lost, and the rest
	 * stays intact. */
	assert_migrate(h, p, n * PS(), d, n, 0);
	((volatile uint64_t *)page_at(p, 7))[0] = 42;
	assert_int_equal(((uint64_t *)page_at(p, 7))[0], 42);
	((uint64_t *)page_at(p, 7))[0] = pat(2, 7, 0);
	assert_pages(p, 0, n, 2);

	/* Destroy brings everything home. */
	assert_migrate(h, p, n * PS(), d, n, 0);
	assert_int_equal(uhmm_device_destroy(d), 0);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, n, 2);
	t_close(h);
}

static void cuda_prefetch_ptr(void **state)
{
	NEED_GPU();
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_cuda(h, 64 << 20);
	const size_t n = 2 * GP + 5; /* the last granule is partial */
	void *p = t_alloc(h, n);
	fill_pages(p, 0, n, 3);

	struct uhmm_migrate_result res = { 0, 0 };
	int rc = uhmm_cuda_prefetch(d, p, n * PS(), &res);
	if (rc)
		fail_msg("prefetch: %s (%s)", strerror(-rc), uhmm_cuda_last_error(d));
	assert_int_equal(res.migrated, n);
	assert_int_equal(res.skipped, 0);
	assert_states(h, p, 0, n, UHMM_STATE_DEVICE, d);
	uint64_t dp = uhmm_cuda_ptr(d, p);
	assert_true(dp != 0);
	assert_true(dp % UHMM_CUDA_GRANULE == 0);
	assert_true(uhmm_cuda_ptr(d, page_at(p, 5)) == dp + 5 * PS());
	assert_true(uhmm_cuda_ptr(d, (char *)p + 123) == dp + 123);
	assert_int_equal(cstats(d).granules_mapped, 3);

	/* The GPU sees the host's data at the mirrored addresses. */
	void *buf = gpu_read(dp, n);
	assert_buf(buf, 0, n, 3);
	free(buf);

	/* GPU-side writes: a memset and a device-to-device copy. */
	assert_int_equal(((memset32_fn)sym("cuMemsetD32_v2"))(dp + 3 * PS(), 0xa5a5a5a5u,
	                                                      2 * PS() / 4), 0);
	assert_int_equal(((dtod_fn)sym("cuMemcpyDtoD_v2"))(dp + (GP + 100) * PS(), dp + 10 * PS(),
	                                                   4 * PS()), 0);
	assert_int_equal(((ctx_sync_fn)sym("cuCtxSynchronize"))(), 0);
	/* The CPU faults the GPU's data home. */
	assert_pages(p, 0, 3, 3);
	assert_int_equal(check_byte(p, 3, 2, 0xa5), -1);
	assert_pages(p, 5, GP + 95, 3);
	buf = malloc(4 * PS());
	assert_non_null(buf);
	memcpy(buf, page_at(p, GP + 100), 4 * PS());
	assert_buf(buf, 10, 4, 3);
	free(buf);
	assert_pages(p, GP + 104, n - GP - 104, 3);
	assert_true(cstats(d).granules_unmapped >= 3);

	/* Prefetch again: mapped again, same addresses, the CPU's view. */
	fill_pages(p, 0, n, 4);
	assert_int_equal(uhmm_cuda_prefetch(d, page_at(p, GP + 1), PS(), &res), 0);
	assert_int_equal(res.migrated, GP); /* rounded out to its granule */
	assert_int_equal(uhmm_cuda_prefetch(d, p, n * PS(), &res), 0);
	assert_true(uhmm_cuda_ptr(d, p) == dp);
	buf = gpu_read(dp, n);
	assert_buf(buf, 0, n, 4);
	free(buf);

	/* A range freed: its mirror goes with it. */
	assert_int_equal(uhmm_free(h, p, n * PS()), 0);
	assert_int_equal(uhmm_cuda_ptr(d, p), 0);
	t_close(h);
}

/* Pages that reached the GPU out of order are lined up GPU-side. */
static void cuda_prefetch_compaction(void **state)
{
	NEED_GPU();
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_cuda(h, 64 << 20);
	const size_t n = GP;
	void *p = t_alloc(h, n);
	fill_pages(p, 0, n, 5);
	/* Second half first, then the first half, then a hole punched home. */
	assert_migrate(h, page_at(p, n / 2), n / 2 * PS(), d, n / 2, 0);
	assert_migrate(h, p, n / 2 * PS(), d, n / 2, 0);
	assert_migrate(h, page_at(p, 7), 3 * PS(), NULL, 3, 0);
	struct uhmm_migrate_result res;
	assert_int_equal(uhmm_cuda_prefetch(d, p, n * PS(), &res), 0);
	assert_int_equal(res.migrated, n);
	assert_int_equal(cstats(d).pages_compacted, n);
	void *buf = gpu_read(uhmm_cuda_ptr(d, p), n);
	assert_buf(buf, 0, n, 5);
	free(buf);
	assert_pages(p, 0, n, 5);
	t_close(h);
}

static void cuda_launch_fill(void **state)
{
	NEED_GPU();
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_cuda(h, 64 << 20);
	const size_t n = GP + 16;
	void *p = t_alloc(h, n); /* never touched: prefetch populates zeros */
	void *fn = NULL;
	int rc = uhmm_cuda_function(d, uhmm_kernels_ptx, "uhmm_fill", &fn);
	if (rc)
		fail_msg("uhmm_cuda_function: %s (%s)", strerror(-rc), uhmm_cuda_last_error(d));
	assert_int_equal(uhmm_cuda_function(d, uhmm_kernels_ptx, "no_such_kernel", &fn) , -ENOENT);
	rc = uhmm_cuda_function(d, uhmm_kernels_ptx, "uhmm_fill", &fn);
	assert_int_equal(rc, 0);

	/* Fill the first n - 1 pages; the last stays zero. */
	uint64_t dp = 0;
	unsigned val = 0x5eed1234u;
	uint64_t words = (n - 1) * PS() / 4;
	struct uhmm_cuda_span use = { p, n * PS() };
	/* The pointer is known once the range has a mirror: prefetch first. */
	assert_int_equal(uhmm_cuda_prefetch(d, p, PS(), NULL), 0);
	dp = uhmm_cuda_ptr(d, p);
	assert_true(dp != 0);
	void *params[] = { &dp, &val, &words };
	struct uhmm_cuda_launch l;
	memset(&l, 0, sizeof(l));
	l.sz = sizeof(l);
	l.function = fn;
	l.grid[0] = (unsigned)((words + 255) / 256);
	l.block[0] = 256;
	l.params = params;
	l.uses = &use;
	l.nuses = 1;
	/* A bad sz is refused before anything is prefetched or launched. */
	struct uhmm_cuda_stats before = cstats(d);
	l.sz = 0;
	assert_int_equal(uhmm_cuda_launch(d, &l), -EINVAL);
	union {
		struct uhmm_cuda_launch l;
		unsigned char b[sizeof(struct uhmm_cuda_launch) + 16];
	} big;
	memset(&big, 0, sizeof(big));
	big.l = l;
	big.l.sz = sizeof(big);
	big.b[sizeof(big) - 1] = 1; /* a field this library does not know */
	assert_int_equal(uhmm_cuda_launch(d, &big.l), -EINVAL);
	assert_int_equal(cstats(d).bytes_to_device, before.bytes_to_device);
	assert_int_equal(cstats(d).granules_mapped, before.granules_mapped);
	l.sz = sizeof(l);
	rc = uhmm_cuda_launch(d, &l);
	if (rc)
		fail_msg("launch: %s (%s)", strerror(-rc), uhmm_cuda_last_error(d));
	assert_int_equal(uhmm_cuda_sync(d), 0);
	for (size_t i = 0; i < words; i += 997)
		assert_int_equal(((uint32_t *)p)[i], val);
	assert_int_equal(((uint32_t *)p)[words - 1], val);
	assert_zero_pages(p, n - 1, 1);
	t_close(h);
}

/* The GPU is full: pages stay on the host, counted as skipped. */
static void cuda_gpu_full(void **state)
{
	NEED_GPU();
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_cuda(h, 256 << 20);
	const size_t n = 8 * GP; /* 16 MiB */
	void *p = t_alloc(h, n);
	fill_pages(p, 0, n, 6);

	/* Take all but ~4 MiB of the GPU. */
	size_t fr = 0, tot = 0;
	assert_int_equal(((meminfo_fn)sym("cuMemGetInfo_v2"))(&fr, &tot), 0);
	CUdeviceptr hog = 0;
	size_t want = fr > (6u << 20) ? fr - (4u << 20) : 0;
	while (want >= (64u << 20) && ((alloc_fn)sym("cuMemAlloc_v2"))(&hog, want) != 0)
		want -= 64u << 20;
	assert_int_equal(((meminfo_fn)sym("cuMemGetInfo_v2"))(&fr, &tot), 0);
	if (!hog || fr >= n * PS() / 2) {
		if (hog)
			((free_fn)sym("cuMemFree_v2"))(hog);
		print_message("skipped: could not fill the GPU (free %zu MiB)\n", fr >> 20);
		t_close(h);
		skip();
	}

	struct uhmm_migrate_result res = { 0, 0 };
	assert_int_equal(uhmm_migrate(h, p, n * PS(), d, &res), 0);
	assert_int_equal(res.migrated + res.skipped, n);
	assert_true(res.skipped > 0);
	assert_true(res.migrated * PS() <= fr);
	assert_int_equal(count_state(h, p, 0, n, UHMM_STATE_DEVICE), res.migrated);
	assert_true(cstats(d).alloc_failures > 0);
	assert_true(t_stats(h).pages_skipped >= res.skipped);
	assert_non_null(strstr(uhmm_cuda_last_error(d), "cuMemCreate"));

	/* Prefetch cannot make it all resident. */
	assert_int_equal(uhmm_cuda_prefetch(d, p, n * PS(), &res), -ENOMEM);
	assert_true(res.skipped > 0);

	/* Nothing was lost. */
	assert_migrate(h, p, n * PS(), NULL, n, 0);
	assert_pages(p, 0, n, 6);

	/* Room again: it all fits. */
	assert_int_equal(((free_fn)sym("cuMemFree_v2"))(hog), 0);
	assert_int_equal(uhmm_cuda_prefetch(d, p, n * PS(), &res), 0);
	assert_int_equal(res.migrated, n);
	assert_pages(p, 0, n, 6);
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_ONE(cuda_available_reports),
		TEST_ONE(cuda_create_unavailable),
		TEST_ONE(cuda_bad_args),
		TEST_BOTH(cuda_migrate_both_ways),
		TEST_BOTH(cuda_prefetch_ptr),
		TEST_ONE(cuda_prefetch_compaction),
		TEST_BOTH(cuda_launch_fill),
		TEST_ONE(cuda_gpu_full),
	};
	return cmocka_run_group_tests_name("cuda", tests, group_setup, NULL);
}
