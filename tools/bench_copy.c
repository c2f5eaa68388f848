/* SPDX-License-Identifier: MIT */
/*
 * `uhmm bench migrate-copy`: the copy path.  A device built with the public
 * API only, not HOST_BACKED: its memory is an mmap'd array of pages it owns,
 * and copy_to_device / copy_from_device are memcpy in and out of it.  Each
 * repetition migrates fresh, populated uhmm_alloc memory to it and back,
 * interleaved with its baselines: memcpy of the same bytes between two
 * populated buffers, and a bare userfaultfd (no uhmm) filled with UFFDIO_COPY
 * in 2 MiB calls, the allocation-bound limit of the way home.  Run with N
 * threads on disjoint parts (baselines too), in a context that may use
 * UFFDIO_MOVE and in one opened with UHMM_OPT_NO_MOVE; RSS is read around
 * the migration to the device (what the host keeps of data that left).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uhmm.h"
#include "bench.h"

#define PG      BENCH_PAGE
#define MIB     (1ul << 20)
#define UCHUNK  (2ul << 20) /* bytes per UFFDIO_COPY call */
#define CNAME   "migrate-copy"

/* ---- the copy device ---- */

struct cdev {
	char *store; /* device memory: npages pages, owned by the device */
	size_t npages;
	struct uhmm_device *dev;
	struct uhmm_devmem *m;
};

/* Pages idx[0..n) <-> a contiguous host buffer, one memcpy per run of
 * consecutive indices (the allocator hands out runs). */
static int cdev_copy(struct uhmm_device *d, const size_t *idx, char *host, size_t n, bool to)
{
	struct cdev *c = uhmm_device_priv(d);
	for (size_t i = 0, j; i < n; i = j) {
		for (j = i + 1; j < n && idx[j] == idx[i] + (j - i); j++)
			;
		if (idx[j - 1] >= c->npages)
			return -EINVAL;
		char *dev = c->store + idx[i] * PG;
		if (to)
			memcpy(dev, host + i * PG, (j - i) * PG);
		else
			memcpy(host + i * PG, dev, (j - i) * PG);
	}
	return 0;
}

static int cdev_to(struct uhmm_device *d, struct uhmm_devmem *m, const size_t *idx,
                   const void *src, size_t n)
{
	(void)m;
	return cdev_copy(d, idx, (char *)src, n, true);
}

static int cdev_from(struct uhmm_device *d, void *dst, struct uhmm_devmem *m, const size_t *idx,
                     size_t n)
{
	(void)m;
	return cdev_copy(d, idx, dst, n, false);
}

/* ---- jobs: one thread's part of a migration or of a baseline ---- */

enum jkind { J_MEMCPY, J_MIGRATE, J_UFFDCOPY };

struct job {
	enum jkind kind;
	struct uhmm *h;
	struct uhmm_device *to; /* J_MIGRATE: NULL = system memory */
	char *dst;
	const char *src;
	size_t len;
	int uffd;
	size_t moved; /* J_MIGRATE: pages migrated */
	int err;
	atomic_int *go;
	pthread_t t;
};

static void job_run(struct job *j)
{
	struct uhmm_migrate_result res = { 0, 0 };
	switch (j->kind) {
	case J_MEMCPY:
		memcpy(j->dst, j->src, j->len);
		break;
	case J_MIGRATE:
		j->err = uhmm_migrate(j->h, j->dst, j->len, j->to, &res);
		j->moved = res.migrated;
		break;
	case J_UFFDCOPY:
		for (size_t off = 0; off < j->len && !j->err;) {
			size_t l = j->len - off < UCHUNK ? j->len - off : UCHUNK;
			struct uffdio_copy c = { .dst = (uintptr_t)j->dst + off,
				                 .src = (uintptr_t)j->src + off, .len = l,
				                 .mode = UFFDIO_COPY_MODE_DONTWAKE };
			if (ioctl(j->uffd, UFFDIO_COPY, &c) && errno != EAGAIN)
				j->err = -errno;
			if (c.copy > 0)
				off += (size_t)c.copy;
		}
		break;
	}
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	while (!atomic_load(j->go))
		;
	job_run(j);
	return NULL;
}

/* Split [dst, dst+len) (and src) into nt page-aligned parts; run them at
 * once, one thread each (1: on this thread).  Seconds, -1 on error. */
static double run_jobs(struct job *j, unsigned nt, enum jkind kind, struct uhmm *h,
                       struct uhmm_device *to, char *dst, const char *src, size_t len, int uffd)
{
	atomic_int go = 0;
	size_t per = len / PG / nt * PG;
	unsigned started = 0;
	for (unsigned i = 0; i < nt; i++)
		j[i] = (struct job){ .kind = kind, .h = h, .to = to, .dst = dst + i * per,
			             .src = src ? src + i * per : NULL, .uffd = uffd, .go = &go,
			             .len = i + 1 == nt ? len - i * per : per };
	double t;
	if (nt == 1) {
		t = now_s();
		job_run(j);
		t = now_s() - t;
	} else {
		for (; started < nt; started++)
			if (pthread_create(&j[started].t, NULL, job_main, &j[started]))
				break;
		t = now_s();
		atomic_store(&go, 1);
		for (unsigned i = 0; i < started; i++)
			pthread_join(j[i].t, NULL);
		t = now_s() - t;
		if (started < nt) {
			bench_error(CNAME, "pthread_create failed");
			return -1;
		}
	}
	size_t moved = 0;
	for (unsigned i = 0; i < nt; i++) {
		if (j[i].err) {
			bench_error(CNAME, "%s: %s", kind == J_MIGRATE ? "uhmm_migrate" : "UFFDIO_COPY",
			            strerror(-j[i].err));
			return -1;
		}
		moved += j[i].moved;
	}
	if (kind == J_MIGRATE && moved != len / PG) {
		bench_error(CNAME, "uhmm_migrate(%s): %zu of %zu pages moved", to ? "device" : "system",
		            moved, len / PG);
		return -1;
	}
	return t;
}

/* ---- the bare UFFDIO_COPY baseline ---- */

static int uffd_plain(void)
{
	int fd = -1;
#ifdef UFFD_USER_MODE_ONLY
	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
#endif
	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
#ifdef USERFAULTFD_IOC_NEW
	if (fd < 0) {
		int d = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if (d >= 0) {
			fd = ioctl(d, USERFAULTFD_IOC_NEW, O_CLOEXEC);
			close(d);
		}
	}
#endif
	struct uffdio_api api = { .api = UFFD_API };
	if (fd >= 0 && ioctl(fd, UFFDIO_API, &api)) {
		close(fd);
		fd = -1;
	}
	return fd < 0 ? -errno : fd;
}

/* Fill a fresh registered empty mapping from src with nt threads. */
static double uffd_fill(struct job *j, unsigned nt, const char *src, size_t len)
{
	int fd = uffd_plain();
	if (fd < 0) {
		bench_error(CNAME, "userfaultfd: %s", strerror(-fd));
		return -1;
	}
	double t = -1;
	char *q = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
	               -1, 0);
	struct uffdio_register reg = { .range = { (uintptr_t)q, len },
		                       .mode = UFFDIO_REGISTER_MODE_MISSING };
	if (q == MAP_FAILED || ioctl(fd, UFFDIO_REGISTER, &reg))
		bench_error(CNAME, "mmap/UFFDIO_REGISTER: %s", strerror(errno));
	else
		t = run_jobs(j, nt, J_UFFDCOPY, NULL, NULL, q, src, len, fd);
	if (q != MAP_FAILED)
		munmap(q, len);
	close(fd);
	return t;
}

/* ---- the case ---- */

static inline uint64_t pat(size_t page, uint64_t salt)
{
	return ((uint64_t)page + 1) * UINT64_C(0x9e3779b97f4a7c15) ^ salt;
}

static double gbps(size_t bytes, double s)
{
	return s > 0 ? (double)bytes / s / 1e9 : 0;
}

/* One context (move allowed or not), nt threads: four rows. */
static int copy_one(bool nomove, const char *label, unsigned nt, size_t len, char *src, char *dst)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	struct uhmm_device_ops ops = { .copy_to_device = cdev_to, .copy_from_device = cdev_from };
	struct cdev cd = { .npages = len / PG + 512 };
	struct uhmm *h = NULL;
	struct job j[64];
	char var[32], bmem[40];
	int rc = -1;

	snprintf(var, sizeof(var), "%s %uthr", label, nt);
	if (nt > 1)
		snprintf(bmem, sizeof(bmem), "memcpy %u thr", nt);
	else
		snprintf(bmem, sizeof(bmem), "memcpy");
	struct row *rd = row_new(CNAME, "", U_GBPS, bmem), *rs = row_new(CNAME, "", U_GBPS, bmem);
	struct row *ru = row_new(CNAME, "", U_GBPS, "bare UFFDIO_COPY");
	struct row *rk = row_new(CNAME, "", U_PCT, "");
	snprintf(rd->variant, sizeof(rd->variant), "%s %uthr to-device", label, nt);
	snprintf(rs->variant, sizeof(rs->variant), "%s %uthr to-system", label, nt);
	snprintf(ru->variant, sizeof(ru->variant), "%s %uthr to-system", label, nt);
	snprintf(rk->variant, sizeof(rk->variant), "%s %uthr host kept", label, nt);

	o.flags = nomove ? UHMM_OPT_NO_MOVE : 0;
	int e = uhmm_open(&o, &h);
	if (e) {
		bench_error(CNAME, "uhmm_open: %s", strerror(-e));
		h = NULL;
		goto out;
	}
	cd.store = mmap(NULL, cd.npages * PG, PROT_READ | PROT_WRITE,
	                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (cd.store == MAP_FAILED) {
		cd.store = NULL;
		bench_error(CNAME, "mmap device memory: %s", strerror(errno));
		goto out;
	}
	memset(cd.store, 0xee, cd.npages * PG); /* resident before any RSS reading */
	if ((e = uhmm_device_create(h, "copy-dev", &ops, 0, &cd, &cd.dev)) ||
	    (e = uhmm_devmem_add(cd.dev, cd.npages * PG,
	                         UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE, &cd.m))) {
		bench_error(CNAME, "uhmm_device_create/uhmm_devmem_add: %s", strerror(-e));
		goto out;
	}
	long gr0 = 0, gr1 = 0; /* RSS growth summed over the reps */
	for (int rep = -1; rep < bopt.reps; rep++) { /* rep -1: warm-up, not recorded */
		const uint64_t salt = 0xc09e0000u + (unsigned)(rep + 1) * 2 + nomove;
		progress(CNAME, var, rep, bopt.reps);
		double tm = run_jobs(j, nt, J_MEMCPY, NULL, NULL, dst, src, len, -1);
		double tu = uffd_fill(j, nt, src, len);
		long r0 = statm_rss();
		void *q;
		if ((e = uhmm_alloc(h, len, &q))) {
			bench_error(CNAME, "uhmm_alloc: %s", strerror(-e));
			goto out;
		}
		char *p = q;
		for (size_t i = 0; i < len / PG; i++) { /* populate: first and last word */
			*(volatile uint64_t *)(p + i * PG) = pat(i, salt);
			*(volatile uint64_t *)(p + i * PG + PG - 8) = ~pat(i, salt);
		}
		long r1 = statm_rss();
		struct uhmm_stats s0 = UHMM_STATS_INIT, s1 = UHMM_STATS_INIT;
		uhmm_stats_get(h, &s0);
		double td = run_jobs(j, nt, J_MIGRATE, h, cd.dev, p, NULL, len, -1);
		long r2 = statm_rss();
		uhmm_stats_get(h, &s1);
		double ts = td < 0 ? -1 : run_jobs(j, nt, J_MIGRATE, h, NULL, p, NULL, len, -1);
		size_t bad = 0;
		for (size_t i = 0; ts >= 0 && i < len / PG; i++)
			bad += *(uint64_t *)(p + i * PG) != pat(i, salt) ||
			       *(uint64_t *)(p + i * PG + PG - 8) != ~pat(i, salt);
		if ((e = uhmm_free(h, p, len)))
			bench_error(CNAME, "uhmm_free: %s", strerror(-e));
		if (bad)
			bench_error(CNAME, "%s: %zu of %zu pages hold wrong data after the round trip",
			            var, bad, len / PG);
		if (tm < 0 || tu < 0 || td < 0 || ts < 0 || bad || e || r0 < 0 || r1 < 0 || r2 < 0)
			goto out;
		if (rep < 0)
			continue;
		series_add(&rd->val, gbps(len, td));
		series_add(&rd->base, gbps(len, tm));
		series_add(&rs->val, gbps(len, ts));
		series_add(&rs->base, gbps(len, tm));
		series_add(&ru->val, gbps(len, ts));
		series_add(&ru->base, gbps(len, tu));
		series_add(&rk->val, 100.0 * (double)(r2 - r0) / (double)len);
		gr0 += r1 - r0;
		gr1 += r2 - r0;
		if (rep == 0)
			snprintf(rd->note, sizeof(rd->note),
			         "uhmm_migrate of %zu MiB to a copy device (memcpy into its own memory) by %u "
			         "thread(s) on disjoint parts; per rep %llu copy, %llu move calls, %llu "
			         "copy+unmap pages",
			         len / MIB, nt, (unsigned long long)(s1.copy_calls - s0.copy_calls),
			         (unsigned long long)(s1.move_calls - s0.move_calls),
			         (unsigned long long)(s1.fallback_pages - s0.fallback_pages));
	}
	snprintf(rs->note, sizeof(rs->note),
	         "uhmm_migrate back to system memory; baseline memcpy between two populated buffers");
	snprintf(ru->note, sizeof(ru->note),
	         "the same migration back vs an empty mapping of a bare userfaultfd (no uhmm) filled "
	         "with UFFDIO_COPY in 2 MiB calls");
	snprintf(rk->note, sizeof(rk->note),
	         "RSS growth (mean): populating +%.1f MiB, after to-device +%.2f MiB, of %zu MiB "
	         "data; the staging buffers the warm-up used were resident before",
	         (double)gr0 / bopt.reps / MIB, (double)gr1 / bopt.reps / MIB, len / MIB);
	rc = 0;
out:
	if (rc)
		rd->val.n = rs->val.n = ru->val.n = rk->val.n = 0;
	row_finish(rd, CMP_NONE, 0, false);
	row_finish(rs, CMP_NONE, 0, false);
	row_finish(ru, CMP_NONE, 0, false);
	row_finish(rk, CMP_LE, 1.0, false);
	printf("%-18s %-24s   reproduce: ./build/tools/uhmm bench migrate-copy --size %zuM "
	       "--threads %u --reps %d  (rows '%s ...')\n",
	       "", "", len / MIB, nt, bopt.reps, var);
	fflush(stdout);
	if (h && (e = uhmm_close(h))) {
		bench_error(CNAME, "uhmm_close: %s", strerror(-e));
		rc = -1;
	}
	if (cd.store)
		munmap(cd.store, cd.npages * PG);
	return rc;
}

int case_migrate_copy(void)
{
	size_t len = bopt.size_set || bopt.quick ? bopt.size : 256 * MIB;
	unsigned nts[2] = { 1, 2 }, nnt = 2;
	struct uhmm_sysinfo si = UHMM_SYSINFO_INIT;
	const char *env = getenv("UHMM_NO_MOVE");
	bool move = uhmm_sysinfo_get(&si) == 0 && (si.caps & UHMM_SYS_MOVE) && !(env && atoi(env));
	int rc = 0;

	if (bopt.threads_set) {
		nts[0] = bopt.threads;
		nnt = 1;
	}
	char *src = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (src == MAP_FAILED || dst == MAP_FAILED) {
		bench_error(CNAME, "mmap: %s", strerror(errno));
		rc = -1;
		goto out;
	}
	memset(src, 0x5a, len);
	memset(dst, 0xa5, len);
	for (int v = 0; v < 2; v++)
		for (unsigned t = 0; t < nnt; t++)
			if (copy_one(v == 1, v ? "no-move" : move ? "move" : "move(n/a)", nts[t], len, src,
			             dst))
				rc = -1;
out:
	if (src != MAP_FAILED)
		munmap(src, len);
	if (dst != MAP_FAILED)
		munmap(dst, len);
	return rc;
}
