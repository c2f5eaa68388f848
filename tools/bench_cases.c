/* SPDX-License-Identifier: MIT */
/*
 * The cases of `uhmm bench` (see bench.c and docs/PERFORMANCE.md).
 *
 * Every case opens a fresh context (per fault mode where it has several),
 * warms up once (device memory chunks allocated, page tables built), then
 * runs bopt.reps repetitions, each measuring uhmm and its baseline on the
 * same memory, the same sizes and the same page order.  Data is checked
 * at the end of each case: a benchmark that loses data reports an error.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uhmm.h"
#include "cli.h"
#include "bench.h"

#define PG        BENCH_PAGE
#define MIB       (1ul << 20)
#define HUGE_SZ   (2ul << 20)
#define CHUNK_PG  512 /* pages per device operation: 2 MiB */
#define PAGE_MIX  UINT64_C(0x9e3779b97f4a7c15)

static const char *mode_name(enum uhmm_fault_mode m)
{
	switch (m) {
	case UHMM_FAULT_THREAD: return "thread";
	case UHMM_FAULT_SIGBUS: return "sigbus";
	case UHMM_FAULT_AUTO: break;
	}
	return "auto";
}

/* ---- contexts and memory ---- */

struct ctx {
	struct uhmm *h;
	struct uhmm_device *dev;
	enum uhmm_fault_mode mode; /* what the context really uses */
	char label[16];            /* "auto(thread)", "sigbus", ... */
};

static int ctx_open(const char *cname, struct ctx *c, enum uhmm_fault_mode mode, unsigned fa,
                    size_t capacity)
{
	struct uhmm_options o = { .sz = sizeof(struct uhmm_options), .fault_mode = mode, .fault_around = fa };
	struct uhmm_dummy_options d = { .sz = sizeof(struct uhmm_dummy_options), .capacity = capacity + UHMM_DUMMY_CHUNK };
	int r;

	memset(c, 0, sizeof(*c));
	r = uhmm_open(&o, &c->h);
	if (r) {
		bench_error(cname, "uhmm_open(%s): %s", mode_name(mode), strerror(-r));
		return r;
	}
	r = uhmm_dummy_create(c->h, &d, &c->dev);
	if (r) {
		bench_error(cname, "uhmm_dummy_create: %s", strerror(-r));
		uhmm_close(c->h);
		c->h = NULL;
		return r;
	}
	c->mode = uhmm_fault_mode(c->h);
	if (mode == UHMM_FAULT_AUTO)
		snprintf(c->label, sizeof(c->label), "auto(%s)", mode_name(c->mode));
	else
		snprintf(c->label, sizeof(c->label), "%s", mode_name(c->mode));
	return 0;
}

static void ctx_close(const char *cname, struct ctx *c)
{
	if (!c->h)
		return;
	int r = uhmm_close(c->h);
	if (r)
		bench_error(cname, "uhmm_close: %s", strerror(-r));
	c->h = NULL;
}

/* Plain private anonymous memory, aligned to `align`, prefaulted if asked. */
static char *map_anon(size_t len, size_t align, int advice, bool prefault)
{
	size_t ml = len + (align > PG ? align : 0);
	char *m = mmap(NULL, ml, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
	               -1, 0);
	if (m == MAP_FAILED)
		return NULL;
	char *p = m;
	if (align > PG) {
		p = (char *)(((uintptr_t)m + align - 1) & ~(uintptr_t)(align - 1));
		if (p > m)
			munmap(m, (size_t)(p - m));
		if (p + len < m + ml)
			munmap(p + len, (size_t)(m + ml - (p + len)));
	}
	if (advice)
		madvise(p, len, advice);
	if (prefault)
		memset(p, 0x5a, len);
	return p;
}

static inline uint64_t pat(size_t page, uint64_t salt)
{
	return ((uint64_t)page + 1) * PAGE_MIX ^ salt;
}

/* First word of every page: a pattern (this first touch allocates the page). */
static void fill(char *p, size_t len, uint64_t salt)
{
	for (size_t i = 0; i < len / PG; i++)
		*(volatile uint64_t *)(p + i * PG) = pat(i, salt);
}

static size_t verify(const char *p, size_t len, uint64_t salt)
{
	size_t bad = 0;
	for (size_t i = 0; i < len / PG; i++)
		bad += *(const volatile uint64_t *)(p + i * PG) != pat(i, salt);
	return bad;
}

/* Managed memory holding data: filled as plain memory, then adopted (the
 * fill is not what is measured, and it is fast this way). */
static char *managed_filled(const char *cname, struct ctx *c, size_t len, size_t align,
                            int advice, uint64_t salt)
{
	char *p = map_anon(len, align, advice, false);
	if (!p) {
		bench_error(cname, "mmap %zu bytes: %s", len, strerror(errno));
		return NULL;
	}
	fill(p, len, salt);
	int r = uhmm_range_add(c->h, p, len);
	if (r) {
		bench_error(cname, "uhmm_range_add: %s", strerror(-r));
		munmap(p, len);
		return NULL;
	}
	return p;
}

static void managed_free(const char *cname, struct ctx *c, char *p, size_t len)
{
	if (!p)
		return;
	int r = uhmm_free(c->h, p, len);
	if (r) {
		bench_error(cname, "uhmm_free: %s", strerror(-r));
		munmap(p, len);
	}
}

/* Migrate [p, p+len) in calls of `step` bytes; every page must arrive. */
static int migrate(const char *cname, struct ctx *c, char *p, size_t len, size_t step,
                   struct uhmm_device *to)
{
	size_t moved = 0, skipped = 0;
	for (size_t off = 0; off < len; off += step) {
		struct uhmm_migrate_result res;
		size_t l = len - off < step ? len - off : step;
		int r = uhmm_migrate(c->h, p + off, l, to, &res);
		if (r) {
			bench_error(cname, "uhmm_migrate(%s): %s", to ? "device" : "system", strerror(-r));
			return -1;
		}
		moved += res.migrated;
		skipped += res.skipped;
	}
	if (moved != len / PG) {
		bench_error(cname, "uhmm_migrate(%s): %zu of %zu pages moved (%zu skipped)",
		            to ? "device" : "system", moved, len / PG, skipped);
		return -1;
	}
	return 0;
}

static double gbps(size_t bytes, double s)
{
	return s > 0 ? (double)bytes / s / 1e9 : 0;
}

static double time_memcpy(char *dst, const char *src, size_t len)
{
	double t = now_s();
	memcpy(dst, src, len);
	return now_s() - t;
}

static int check(const char *cname, const char *what, const char *p, size_t len, uint64_t salt)
{
	size_t bad = verify(p, len, salt);
	if (bad) {
		bench_error(cname, "%s: %zu of %zu pages hold wrong data", what, bad, len / PG);
		return -1;
	}
	return 0;
}

/* Kernel first touch: write one byte of each page of fresh anonymous memory
 * (an allocating fault: a zeroed page is mapped), in the order given
 * (NULL: sequential).  4 KiB pages: THP off for the mapping. */
static double kernel_first_touch(size_t len, const uint32_t *order)
{
	char *q = map_anon(len, 0, MADV_NOHUGEPAGE, false);
	if (!q)
		return -1;
	size_t n = len / PG;
	double t = now_s();
	for (size_t i = 0; i < n; i++)
		*(volatile char *)(q + (size_t)(order ? order[i] : i) * PG) = 1;
	t = now_s() - t;
	munmap(q, len);
	return t;
}

/* Read one word of each page in order (NULL: sequential). */
static uint64_t touch_read(const char *p, size_t npages, const uint32_t *order)
{
	uint64_t s = 0;
	for (size_t i = 0; i < npages; i++)
		s += *(const volatile uint64_t *)(p + (size_t)(order ? order[i] : i) * PG);
	return s;
}

static volatile uint64_t g_sink;

/* AnonHugePages (KiB) of the mapping that contains addr, -1 unknown. */
static long smaps_thp_kb(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;
	long v = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
			continue;
		}
		if (in && strncmp(line, "AnonHugePages:", 14) == 0) {
			v = strtol(line + 14, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

/* ---- migrate-to-device / migrate-to-system ---- */

/*
 * One row per direction asked for: size bytes migrated with uhmm_migrate
 * in calls of `step` bytes, against memcpy of the same size between two
 * prefaulted buffers in the same repetition.
 */
static int run_migrate(const char *cname, const char *variant, size_t len, size_t step,
                       size_t align, int advice, bool to_dev, bool to_sys, const char *sweep,
                       enum bench_cmp cmp, double target, bool info)
{
	struct ctx c;
	int rc = -1;
	const uint64_t salt = 0x1111;
	char *dst = NULL, *p = NULL;
	struct row *rd = NULL, *rs = NULL;

	if (ctx_open(cname, &c, UHMM_FAULT_AUTO, 0, len))
		return -1;
	p = managed_filled(cname, &c, len, align, advice, salt);
	dst = map_anon(len, align, advice, true);
	if (!p || !dst)
		goto out;
	if (to_dev) {
		rd = row_new(cname, variant, U_GBPS, "memcpy");
		if (sweep) {
			rd->granule = step;
			snprintf(rd->sweep, sizeof(rd->sweep), "%s", sweep);
		}
	}
	if (to_sys) {
		rs = row_new(cname, variant, U_GBPS, "memcpy");
		if (sweep) {
			rs->granule = step;
			snprintf(rs->sweep, sizeof(rs->sweep), "%s-back", sweep);
		}
		if (to_dev && rs) /* both directions: name them */
			snprintf(rs->variant, sizeof(rs->variant), "%s to-system", variant);
	}
	if (to_dev && to_sys)
		snprintf(rd->variant, sizeof(rd->variant), "%s to-device", variant);
	long thp0 = advice == MADV_HUGEPAGE ? smaps_thp_kb(p) : -1;
	/* Warm-up: device chunks allocated, pool and range page tables built. */
	progress(cname, variant, -1, bopt.reps);
	if (migrate(cname, &c, p, len, step, c.dev) || migrate(cname, &c, p, len, step, NULL))
		goto out;
	time_memcpy(dst, p, len);
	for (int rep = 0; rep < bopt.reps; rep++) {
		progress(cname, variant, rep, bopt.reps);
		double b = time_memcpy(dst, p, len);
		double t = now_s();
		if (migrate(cname, &c, p, len, step, c.dev))
			goto out;
		double td = now_s() - t;
		t = now_s();
		if (migrate(cname, &c, p, len, step, NULL))
			goto out;
		double ts = now_s() - t;
		if (rd) {
			series_add(&rd->val, gbps(len, td));
			series_add(&rd->base, gbps(len, b));
		}
		if (rs) {
			series_add(&rs->val, gbps(len, ts));
			series_add(&rs->base, gbps(len, b));
		}
	}
	if (check(cname, "after the round trips", p, len, salt))
		goto out;
	if (thp0 >= 0 && rd)
		snprintf(rd->note, sizeof(rd->note), "THP-backed before: %ld MiB of %zu; after the round trips: %ld MiB",
		         thp0 / 1024, len / MIB, smaps_thp_kb(p) / 1024);
	rc = 0;
out:
	if (rd) {
		if (rc)
			rd->val.n = 0;
		row_finish(rd, cmp, target, info);
	}
	if (rs) {
		if (rc)
			rs->val.n = 0;
		row_finish(rs, cmp, target, info);
	}
	managed_free(cname, &c, p, len);
	if (dst)
		munmap(dst, len);
	ctx_close(cname, &c);
	return rc;
}

int case_migrate_to_device(void)
{
	return run_migrate("migrate-to-device", "move", bopt.size, bopt.size, 0, MADV_NOHUGEPAGE,
	                   true, false, NULL, CMP_GE, 0.9, false);
}

int case_migrate_to_system(void)
{
	return run_migrate("migrate-to-system", "move", bopt.size, bopt.size, 0, MADV_NOHUGEPAGE,
	                   false, true, NULL, CMP_GE, 0.9, false);
}

int case_huge(void)
{
	return run_migrate("huge", "2M-aligned THP", bopt.size, bopt.size, HUGE_SZ, MADV_HUGEPAGE,
	                   true, true, NULL, CMP_GE, 1.0, false);
}

/* ---- fault-latency ---- */

static int latency_pages(void)
{
	return bopt.quick ? 1024 : 4096;
}

static double median_of(double *v, size_t n)
{
	for (size_t i = 1; i < n; i++) { /* insertion sort: n is small */
		double x = v[i];
		size_t j = i;
		while (j > 0 && v[j - 1] > x) {
			v[j] = v[j - 1];
			j--;
		}
		v[j] = x;
	}
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Per-page times (µs) of write-touching fresh anonymous memory. */
static double kernel_fault_median_us(size_t npages, double *tmp)
{
	char *q = map_anon(npages * PG, 0, MADV_NOHUGEPAGE, false);
	if (!q)
		return -1;
	for (size_t i = 0; i < npages; i++) {
		double t = now_s();
		*(volatile char *)(q + i * PG) = 1;
		tmp[i] = (now_s() - t) * 1e6;
	}
	munmap(q, npages * PG);
	return median_of(tmp, npages);
}

int case_fault_latency(void)
{
	const char *cname = "fault-latency";
	static const enum uhmm_fault_mode modes[] = { UHMM_FAULT_SIGBUS, UHMM_FAULT_THREAD };
	static const double targets[] = { 2.0, 5.0 };
	size_t np = (size_t)latency_pages(), len = np * PG;
	double *tmp = malloc(np * sizeof(double));
	int rc = 0;

	if (!tmp)
		return -1;
	for (size_t m = 0; m < 2; m++) {
		struct ctx c;
		const uint64_t salt = 0x2222;
		if (ctx_open(cname, &c, modes[m], 1, len)) {
			rc = -1;
			continue;
		}
		struct row *r = row_new(cname, c.label, U_US, "kernel 1st touch");
		char *p = managed_filled(cname, &c, len, 0, MADV_NOHUGEPAGE, salt);
		double sum = 0;
		size_t cnt = 0;
		bool ok = p != NULL;
		progress(cname, c.label, -1, bopt.reps);
		if (ok && (migrate(cname, &c, p, len, len, c.dev) || (touch_read(p, np, NULL), 0)))
			ok = false;
		if (ok)
			kernel_fault_median_us(np, tmp);
		for (int rep = 0; ok && rep < bopt.reps; rep++) {
			progress(cname, c.label, rep, bopt.reps);
			if (migrate(cname, &c, p, len, len, c.dev)) {
				ok = false;
				break;
			}
			uint64_t s = 0;
			for (size_t i = 0; i < np; i++) {
				double t = now_s();
				s += *(const volatile uint64_t *)(p + i * PG);
				tmp[i] = (now_s() - t) * 1e6;
				sum += tmp[i];
				cnt++;
			}
			g_sink += s;
			series_add(&r->val, median_of(tmp, np));
			series_add(&r->base, kernel_fault_median_us(np, tmp));
		}
		if (ok && check(cname, c.label, p, len, salt))
			ok = false;
		if (!ok) {
			r->val.n = 0;
			rc = -1;
		} else {
			snprintf(r->note, sizeof(r->note),
			         "per-fault median of %zu faults/rep (fault_around=1); mean %.2f us",
			         np, cnt ? sum / (double)cnt : 0);
		}
		row_finish(r, CMP_LE, targets[m], false);
		managed_free(cname, &c, p, len);
		ctx_close(cname, &c);
	}
	free(tmp);
	return rc;
}

/* ---- fault-stream ---- */

/*
 * Sequential CPU read of device-resident memory: memcpy out of it (every
 * granule faults home), against memcpy of the same pages once they are
 * back (same source, same destination).  fa: fault-around (0 = default).
 */
/* Copy page by page from the last page down: every fault lands below the
 * previous granule, so no sequential stream is detected and each fault
 * resolves exactly the aligned fault-around granule. */
static double time_copy_reverse(char *dst, const char *src, size_t len)
{
	double t = now_s();
	for (size_t i = len / PG; i-- > 0;)
		memcpy(dst + i * PG, src + i * PG, PG);
	return now_s() - t;
}

static int stream_one(const char *cname, enum uhmm_fault_mode mode, unsigned fa, size_t len,
                      char *dst, bool reverse, const char *sweep, enum bench_cmp cmp,
                      double target, bool info)
{
	double (*copy)(char *, const char *, size_t) = reverse ? time_copy_reverse : time_memcpy;
	struct ctx c;
	const uint64_t salt = 0x3333;
	char var[32];
	int rc = -1;

	if (ctx_open(cname, &c, mode, fa, len))
		return -1;
	if (sweep)
		snprintf(var, sizeof(var), "%s %s fa=%u", reverse ? "rev" : "fwd", c.label, fa);
	else
		snprintf(var, sizeof(var), "%s", c.label);
	struct row *r = row_new(cname, var, U_GBPS, reverse ? "memcpy reverse" : "memcpy");
	if (sweep) {
		r->granule = (size_t)fa * PG;
		snprintf(r->sweep, sizeof(r->sweep), "%s", sweep);
	}
	char *p = managed_filled(cname, &c, len, 0, MADV_NOHUGEPAGE, salt);
	if (!p)
		goto out;
	progress(cname, var, -1, bopt.reps);
	if (migrate(cname, &c, p, len, len, c.dev))
		goto out;
	copy(dst, p, len);
	for (int rep = 0; rep < bopt.reps; rep++) {
		progress(cname, var, rep, bopt.reps);
		if (migrate(cname, &c, p, len, len, c.dev))
			goto out;
		struct uhmm_stats s0 = UHMM_STATS_INIT, s1 = UHMM_STATS_INIT;
		uhmm_stats_get(c.h, &s0);
		double t = copy(dst, p, len);
		uhmm_stats_get(c.h, &s1);
		double b = copy(dst, p, len);
		series_add(&r->val, gbps(len, t));
		series_add(&r->base, gbps(len, b));
		if (rep == 0)
			snprintf(r->note, sizeof(r->note), "%llu CPU faults per pass (%.1f pages each)",
			         (unsigned long long)(s1.cpu_faults - s0.cpu_faults),
			         s1.cpu_faults > s0.cpu_faults
			                 ? (double)(len / PG) / (double)(s1.cpu_faults - s0.cpu_faults)
			                 : 0.0);
	}
	if (check(cname, var, dst, len, salt))
		goto out;
	rc = 0;
out:
	if (rc)
		r->val.n = 0;
	row_finish(r, cmp, target, info);
	managed_free(cname, &c, p, len);
	ctx_close(cname, &c);
	return rc;
}

int case_fault_stream(void)
{
	const char *cname = "fault-stream";
	static const enum uhmm_fault_mode modes[] = { UHMM_FAULT_AUTO, UHMM_FAULT_THREAD,
		                                      UHMM_FAULT_SIGBUS };
	size_t len = bopt.size;
	char *dst = map_anon(len, 0, MADV_NOHUGEPAGE, true);
	int rc = 0;

	if (!dst) {
		bench_error(cname, "mmap: %s", strerror(errno));
		return -1;
	}
	for (size_t m = 0; m < 3; m++)
		if (stream_one(cname, modes[m], 0, len, dst, false, NULL, CMP_GE, 0.5, m != 0))
			rc = -1;
	munmap(dst, len);
	return rc;
}

/* ---- fault-random ---- */

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static uint32_t *random_order(size_t n)
{
	uint32_t *o = malloc(n * sizeof(*o));
	uint64_t seed = 0x9e3779b97f4a7c15ull;
	if (!o)
		return NULL;
	for (size_t i = 0; i < n; i++)
		o[i] = (uint32_t)i;
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)(xorshift(&seed) % (i + 1));
		uint32_t t = o[i];
		o[i] = o[j];
		o[j] = t;
	}
	return o;
}

int case_fault_random(void)
{
	const char *cname = "fault-random";
	static const enum uhmm_fault_mode modes[] = { UHMM_FAULT_AUTO, UHMM_FAULT_SIGBUS };
	size_t len = bopt.size, np = len / PG;
	uint32_t *order = random_order(np);
	int rc = 0;

	if (!order)
		return -1;
	for (size_t m = 0; m < 2; m++) {
		struct ctx c;
		const uint64_t salt = 0x4444;
		bool ok = true;
		if (ctx_open(cname, &c, modes[m], 0, len)) {
			rc = -1;
			continue;
		}
		struct row *r = row_new(cname, c.label, U_MS, "kernel 1st touch");
		char *p = managed_filled(cname, &c, len, 0, MADV_NOHUGEPAGE, salt);
		ok = p != NULL;
		progress(cname, c.label, -1, bopt.reps);
		if (ok && migrate(cname, &c, p, len, len, c.dev))
			ok = false;
		if (ok) {
			g_sink += touch_read(p, np, order);
			kernel_first_touch(len, order);
		}
		for (int rep = 0; ok && rep < bopt.reps; rep++) {
			progress(cname, c.label, rep, bopt.reps);
			if (migrate(cname, &c, p, len, len, c.dev)) {
				ok = false;
				break;
			}
			struct uhmm_stats s0 = UHMM_STATS_INIT, s1 = UHMM_STATS_INIT;
			uhmm_stats_get(c.h, &s0);
			double t = now_s();
			g_sink += touch_read(p, np, order);
			t = now_s() - t;
			uhmm_stats_get(c.h, &s1);
			double b = kernel_first_touch(len, order);
			series_add(&r->val, t * 1e3);
			series_add(&r->base, b * 1e3);
			if (rep == 0)
				snprintf(r->note, sizeof(r->note),
				         "%zu pages in random order, %llu CPU faults per pass", np,
				         (unsigned long long)(s1.cpu_faults - s0.cpu_faults));
		}
		if (ok && check(cname, c.label, p, len, salt))
			ok = false;
		if (!ok) {
			r->val.n = 0;
			rc = -1;
		}
		row_finish(r, CMP_LE, 1.5, m != 0);
		managed_free(cname, &c, p, len);
		ctx_close(cname, &c);
	}
	free(order);
	return rc;
}

/* ---- device-fault ---- */

/* The dummy device reads [p, p+len) 2 MiB at a time into buf. */
static int device_read_all(const char *cname, struct ctx *c, const char *p, size_t len, char *buf)
{
	for (size_t off = 0; off < len; off += CHUNK_PG * PG) {
		size_t n = (len - off) / PG < CHUNK_PG ? (len - off) / PG : CHUNK_PG;
		int r = uhmm_dummy_read(c->dev, p + off, buf, n, NULL);
		if (r) {
			bench_error(cname, "uhmm_dummy_read: %s", strerror(-r));
			return -1;
		}
	}
	return 0;
}

/* The CPU's analogue: memcpy 2 MiB at a time into the same buffer. */
static double cpu_read_all(const char *p, size_t len, char *buf)
{
	double t = now_s();
	for (size_t off = 0; off < len; off += CHUNK_PG * PG) {
		size_t l = len - off < CHUNK_PG * PG ? len - off : CHUNK_PG * PG;
		memcpy(buf, p + off, l);
	}
	return now_s() - t;
}

int case_device_fault(void)
{
	const char *cname = "device-fault";
	size_t len = bopt.size;
	struct ctx c;
	const uint64_t salt = 0x5555;
	char *buf = map_anon(CHUNK_PG * PG, 0, 0, true);
	char *p = NULL;
	int rc = -1;

	if (!buf)
		return -1;
	if (ctx_open(cname, &c, UHMM_FAULT_AUTO, 0, len)) {
		munmap(buf, CHUNK_PG * PG);
		return -1;
	}
	/* (a) never touched: every device read is a device fault that
	 * populates the range (zero page); the kernel's analogue is the CPU
	 * reading fresh anonymous memory (read faults map the zero page). */
	char var[32];
	snprintf(var, sizeof(var), "untouched %s", c.label);
	struct row *r = row_new(cname, var, U_MS, "kernel 1st touch");
	bool ok = true;
	progress(cname, var, -1, bopt.reps);
	for (int rep = -1; ok && rep < bopt.reps; rep++) {
		void *q;
		if (rep >= 0)
			progress(cname, var, rep, bopt.reps);
		int e = uhmm_alloc(c.h, len, &q);
		if (e) {
			bench_error(cname, "uhmm_alloc: %s", strerror(-e));
			ok = false;
			break;
		}
		double t = now_s();
		if (device_read_all(cname, &c, q, len, buf))
			ok = false;
		t = now_s() - t;
		managed_free(cname, &c, q, len);
		char *k = map_anon(len, 0, MADV_NOHUGEPAGE, false);
		if (!k) {
			ok = false;
			break;
		}
		double b = cpu_read_all(k, len, buf);
		munmap(k, len);
		if (ok && rep >= 0) {
			series_add(&r->val, t * 1e3);
			series_add(&r->base, b * 1e3);
		}
	}
	if (!ok)
		r->val.n = 0;
	snprintf(r->note, sizeof(r->note),
	         "uhmm_dummy_read of a fresh uhmm_alloc range vs memcpy out of fresh anonymous memory");
	row_finish(r, CMP_LE, 1.5, false);
	if (!ok)
		goto out;

	/* (b) present: system memory, the device's page table already warm. */
	snprintf(var, sizeof(var), "present %s", c.label);
	r = row_new(cname, var, U_GBPS, "memcpy");
	p = managed_filled(cname, &c, len, 0, MADV_NOHUGEPAGE, salt);
	ok = p != NULL;
	progress(cname, var, -1, bopt.reps);
	if (ok && device_read_all(cname, &c, p, len, buf))
		ok = false;
	if (ok)
		cpu_read_all(p, len, buf);
	for (int rep = 0; ok && rep < bopt.reps; rep++) {
		progress(cname, var, rep, bopt.reps);
		struct uhmm_dummy_counters d0, d1;
		uhmm_dummy_counters_get(c.dev, &d0);
		double t = now_s();
		if (device_read_all(cname, &c, p, len, buf)) {
			ok = false;
			break;
		}
		t = now_s() - t;
		uhmm_dummy_counters_get(c.dev, &d1);
		double b = cpu_read_all(p, len, buf);
		series_add(&r->val, gbps(len, t));
		series_add(&r->base, gbps(len, b));
		if (rep == 0)
			snprintf(r->note, sizeof(r->note), "%llu device faults per pass (warm table)",
			         (unsigned long long)(d1.faults - d0.faults));
	}
	if (ok && check(cname, var, p, len, salt))
		ok = false;
	if (!ok)
		r->val.n = 0;
	row_finish(r, CMP_GE, 0.5, false);
	rc = ok ? 0 : -1;
out:
	managed_free(cname, &c, p, len);
	ctx_close(cname, &c);
	munmap(buf, CHUNK_PG * PG);
	return rc;
}

/* ---- threads ---- */

struct worker {
	pthread_t t;
	const char *p;
	size_t npages;
	atomic_int *go;
	uint64_t sum;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	while (!atomic_load(w->go))
		;
	w->sum = touch_read(w->p, w->npages, NULL);
	return NULL;
}

/* Time for nt threads to read one word of every page of their part. */
static double run_threads(const char *p, size_t np, unsigned nt)
{
	struct worker w[64];
	atomic_int go = 0;
	size_t per = np / nt;
	unsigned started = 0;
	for (unsigned i = 0; i < nt; i++) {
		w[i] = (struct worker){ .p = p + (size_t)i * per * PG,
			                .npages = i + 1 == nt ? np - (size_t)i * per : per, .go = &go };
		if (pthread_create(&w[i].t, NULL, worker_main, &w[i]))
			break;
		started++;
	}
	if (started < nt) {
		atomic_store(&go, 1);
		for (unsigned i = 0; i < started; i++)
			pthread_join(w[i].t, NULL);
		return -1;
	}
	double t = now_s();
	atomic_store(&go, 1);
	for (unsigned i = 0; i < nt; i++) {
		pthread_join(w[i].t, NULL);
		g_sink += w[i].sum;
	}
	return now_s() - t;
}

int case_threads(void)
{
	const char *cname = "threads";
	static const enum uhmm_fault_mode modes[] = { UHMM_FAULT_AUTO, UHMM_FAULT_SIGBUS };
	size_t len = bopt.size, np = len / PG;
	int rc = 0;

	for (size_t m = 0; m < 2; m++) {
		struct ctx c;
		const uint64_t salt = 0x6666;
		char var[32], bname[32];
		if (ctx_open(cname, &c, modes[m], 0, len)) {
			rc = -1;
			continue;
		}
		snprintf(var, sizeof(var), "%u thr %s", bopt.threads, c.label);
		snprintf(bname, sizeof(bname), "1 thread");
		struct row *r = row_new(cname, var, U_GBPS, bname);
		char *p = managed_filled(cname, &c, len, 0, MADV_NOHUGEPAGE, salt);
		bool ok = p != NULL;
		progress(cname, var, -1, bopt.reps);
		if (ok && (migrate(cname, &c, p, len, len, c.dev) || run_threads(p, np, bopt.threads) < 0))
			ok = false;
		for (int rep = 0; ok && rep < bopt.reps; rep++) {
			progress(cname, var, rep, bopt.reps);
			if (migrate(cname, &c, p, len, len, c.dev)) {
				ok = false;
				break;
			}
			struct uhmm_stats s0 = UHMM_STATS_INIT, s1 = UHMM_STATS_INIT, s2 = UHMM_STATS_INIT;
			uhmm_stats_get(c.h, &s0);
			double t1 = run_threads(p, np, 1);
			uhmm_stats_get(c.h, &s1);
			if (migrate(cname, &c, p, len, len, c.dev)) {
				ok = false;
				break;
			}
			uhmm_stats_get(c.h, &s2);
			double tn = run_threads(p, np, bopt.threads);
			if (rep == 0) {
				struct uhmm_stats s3 = UHMM_STATS_INIT;
				uhmm_stats_get(c.h, &s3);
				snprintf(r->note, sizeof(r->note),
				         "one word read per page, default fault-around; ratio = throughput "
				         "speed-up; CPU faults per pass: %llu with 1 thread, %llu with %u",
				         (unsigned long long)(s1.cpu_faults - s0.cpu_faults),
				         (unsigned long long)(s3.cpu_faults - s2.cpu_faults), bopt.threads);
			}
			if (t1 < 0 || tn < 0) {
				bench_error(cname, "pthread_create failed");
				ok = false;
				break;
			}
			series_add(&r->val, gbps(len, tn));
			series_add(&r->base, gbps(len, t1));
		}
		if (ok && check(cname, var, p, len, salt))
			ok = false;
		if (!ok) {
			r->val.n = 0;
			rc = -1;
		}
		row_finish(r, CMP_GE, 1.6, m != 0);
		managed_free(cname, &c, p, len);
		ctx_close(cname, &c);
	}
	return rc;
}

/* ---- metadata ---- */

long statm_rss(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, rss = -1;
	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &rss) != 2)
		rss = -1;
	fclose(f);
	return rss < 0 ? -1 : rss * (long)PG;
}

static long status_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	size_t kl = strlen(key);
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
			v = strtol(line + kl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/* Rss (bytes) of the mappings inside [lo, hi), from smaps. */
static long smaps_rss_in(uintptr_t lo, uintptr_t hi)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;
	long sum = 0;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = a >= lo && b <= hi;
			continue;
		}
		if (in && strncmp(line, "Rss:", 4) == 0)
			sum += strtol(line + 4, NULL, 10) * 1024;
	}
	fclose(f);
	return sum;
}

/*
 * A 1 TiB managed range; SIZE bytes of it touched (written by the CPU:
 * uhmm's zero-fill faults) and migrated to the dummy device, in 16 pieces
 * spread over the whole TiB.  RSS is read before the context exists (R0),
 * after half the pieces (R1) and after all (R2).  The data itself stays
 * resident exactly once (it moves into the device pool), so
 *   per page = ((R2 - R1) - data of the second half) / its pages
 *   fixed    = (R2 - R0) - all data - per page * all pages
 * Interior radix-tree nodes and device-memory chunks (64 MiB) are
 * allocated as pieces are touched, so both halves pay for theirs.
 */
int case_metadata(void)
{
	const char *cname = "metadata";
	const size_t range = 1ul << 40;
	const size_t pieces = 16;
	size_t touch = bopt.size, piece = touch / pieces;
	struct ctx c;
	void *q = NULL;
	long r0, r1 = 0, r2 = 0, x1 = 0, x2 = 0, pte0 = 0, pte2 = 0;
	int rc = -1;

	piece &= ~(64 * 1024ul - 1);
	if (piece == 0)
		piece = 64 * 1024ul;
	touch = piece * pieces;
	struct row *rp = row_new(cname, "per touched page", U_BPP, "");
	struct row *rf = row_new(cname, "fixed", U_MIB, "");
	for (int rep = 0; rep < bopt.reps; rep++) {
		progress(cname, "1 TiB range", rep, bopt.reps);
		r0 = statm_rss();
		pte0 = status_kb("VmPTE");
		if (ctx_open(cname, &c, UHMM_FAULT_AUTO, 0, touch))
			goto out;
		int e = uhmm_alloc(c.h, range, &q);
		if (e) {
			bench_error(cname, "uhmm_alloc(1 TiB): %s", strerror(-e));
			ctx_close(cname, &c);
			goto out;
		}
		bool ok = true;
		for (size_t i = 0; ok && i < pieces; i++) {
			char *at = (char *)q + i * (range / pieces) + (range / pieces / 2);
			fill(at, piece, 0x7777 + i);
			if (migrate(cname, &c, at, piece, piece, c.dev))
				ok = false;
			if (i + 1 == pieces / 2) {
				r1 = statm_rss();
				x1 = smaps_rss_in((uintptr_t)q, (uintptr_t)q + range);
			}
		}
		r2 = statm_rss();
		x2 = smaps_rss_in((uintptr_t)q, (uintptr_t)q + range);
		pte2 = status_kb("VmPTE");
		for (size_t i = 0; ok && i < pieces; i++) {
			char *at = (char *)q + i * (range / pieces) + (range / pieces / 2);
			if (check(cname, "1 TiB range", at, piece, 0x7777 + i))
				ok = false;
		}
		managed_free(cname, &c, q, range);
		q = NULL;
		ctx_close(cname, &c);
		if (!ok || r0 < 0 || r1 < 0 || r2 < 0 || x1 < 0 || x2 < 0)
			goto out;
		size_t half = piece * (pieces / 2);
		double per = ((double)(r2 - r1) - (double)half - (double)(x2 - x1)) / (double)(half / PG);
		double fixed =
		        ((double)(r2 - r0) - (double)touch - (double)x2 - per * (double)(touch / PG)) / MIB;
		series_add(&rp->val, per);
		series_add(&rf->val, fixed);
	}
	snprintf(rp->note, sizeof(rp->note),
	         "%zu MiB touched in %zu pieces over 1 TiB; fault-around populated %ld KiB more (data, "
	         "excluded); kernel page tables (VmPTE, not in RSS) +%ld KiB",
	         touch / MIB, pieces, x2 / 1024, pte2 - pte0);
	rc = 0;
out:
	if (rc) {
		rp->val.n = 0;
		rf->val.n = 0;
	}
	row_finish(rp, CMP_LE, 16, false);
	row_finish(rf, CMP_LE, 8, false);
	return rc;
}

/* ---- granule sweep ---- */

int case_granule(void)
{
	const char *cname = "granule";
	size_t len = bopt.size < (128ul << 20) ? bopt.size : (128ul << 20);
	char *dst = map_anon(len, 0, MADV_NOHUGEPAGE, true);
	static const enum uhmm_fault_mode modes[] = { UHMM_FAULT_SIGBUS, UHMM_FAULT_THREAD };
	static const char *const sweeps[2][2] = { { "fault-fwd-sigbus", "fault-rev-sigbus" },
		                                  { "fault-fwd-thread", "fault-rev-thread" } };
	int rc = 0;

	if (!dst)
		return -1;
	/* Forward: fault-around is the first granule of a growing stream;
	 * reverse: every fault resolves exactly the fault-around granule. */
	for (size_t m = 0; m < 2; m++)
		for (int rev = 0; rev < 2; rev++)
			for (unsigned fa = 1; fa <= 512; fa *= 2)
				if (stream_one(cname, modes[m], fa, len, dst, rev, sweeps[m][rev], CMP_NONE, 0,
				               false))
					rc = -1;
	munmap(dst, len);
	for (size_t step = PG; step <= HUGE_SZ; step *= 2) {
		char var[32];
		snprintf(var, sizeof(var), "migrate %zuK", step / 1024);
		if (run_migrate(cname, var, len, step, 0, MADV_NOHUGEPAGE, true, true, "migrate",
		                CMP_NONE, 0, false))
			rc = -1;
	}
	return rc;
}
