/* SPDX-License-Identifier: MIT */
/*
 * What populating never-touched managed memory would cost (issue 12, item
 * 9): in SIGBUS mode a system call into a never-populated page of a
 * userfaultfd-registered range fails with EFAULT, so the options are to
 * populate a range when it is adopted, or to keep it out of the MISSING
 * registration.  Standalone (no uhmm), not part of the test suite:
 *
 *   cc -O2 -o populate_cost tools/measure/populate_cost.c && ./populate_cost [MiB]
 *
 * Populates MiB (default 256) three ways and prints time and page-table /
 * resident memory, scaled to a 1 TiB range; then registers a 1 TiB sparse
 * range with userfaultfd (MISSING, and WP only) and times that.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static long status_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char l[256];
	long v = -1;
	while (f && fgets(l, sizeof l, f))
		if (!strncmp(l, key, strlen(key)))
			v = atol(l + strlen(key) + 1);
	if (f)
		fclose(f);
	return v;
}

static int uffd_open(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | 1 /* UFFD_USER_MODE_ONLY */);
	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_SIGBUS };
	if (fd < 0 || ioctl(fd, UFFDIO_API, &api)) {
		perror("userfaultfd");
		exit(1);
	}
	return fd;
}

static int reg(int fd, void *p, size_t len, unsigned long mode)
{
	struct uffdio_register r = { .range = { (unsigned long)p, len }, .mode = mode };
	return ioctl(fd, UFFDIO_REGISTER, &r);
}

static void report(const char *how, size_t len, double t, long pte0, long rss0)
{
	long pte = status_kb("VmPTE:") - pte0, rss = status_kb("VmRSS:") - rss0;
	double scale = (double)(1ULL << 40) / (double)len;
	printf("%-34s %8.1f ms  +%7ld KiB PTE  +%8ld KiB RSS   1 TiB: %7.1f s, %6.1f GiB PTE, %6.1f GiB RSS\n",
	       how, t * 1e3, pte, rss, t * scale, pte * scale / (1 << 20), rss * scale / (1 << 20));
}

int main(int argc, char **argv)
{
	size_t len = (size_t)(argc > 1 ? atol(argv[1]) : 256) << 20;
	int fd = uffd_open();

	/* 1. UFFDIO_ZEROPAGE after registration: the zero page, read-only. */
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	madvise(p, len, MADV_NOHUGEPAGE);
	reg(fd, p, len, UFFDIO_REGISTER_MODE_MISSING);
	long pte0 = status_kb("VmPTE:"), rss0 = status_kb("VmRSS:");
	double t = now();
	struct uffdio_zeropage z = { .range = { (unsigned long)p, len } };
	if (ioctl(fd, UFFDIO_ZEROPAGE, &z))
		perror("UFFDIO_ZEROPAGE");
	report("UFFDIO_ZEROPAGE", len, now() - t, pte0, rss0);
	munmap(p, len);

	/* 2. MADV_POPULATE_READ before registration (4 KiB zero pages). */
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	madvise(p, len, MADV_NOHUGEPAGE);
	pte0 = status_kb("VmPTE:");
	rss0 = status_kb("VmRSS:");
	t = now();
	if (madvise(p, len, MADV_POPULATE_READ))
		perror("MADV_POPULATE_READ");
	report("MADV_POPULATE_READ", len, now() - t, pte0, rss0);
	munmap(p, len);

	/* 3. MADV_POPULATE_WRITE: real memory for every page. */
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	madvise(p, len, MADV_NOHUGEPAGE);
	pte0 = status_kb("VmPTE:");
	rss0 = status_kb("VmRSS:");
	t = now();
	if (madvise(p, len, MADV_POPULATE_WRITE))
		perror("MADV_POPULATE_WRITE");
	report("MADV_POPULATE_WRITE", len, now() - t, pte0, rss0);
	munmap(p, len);

	/* 4. Registering a sparse 1 TiB range costs nothing either way. */
	size_t big = 1ULL << 40;
	char *b = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (b == MAP_FAILED) {
		perror("mmap 1 TiB");
		return 0;
	}
	t = now();
	int r1 = reg(fd, b, big, UFFDIO_REGISTER_MODE_MISSING);
	double t1 = now() - t;
	struct uffdio_range ur = { (unsigned long)b, big };
	ioctl(fd, UFFDIO_UNREGISTER, &ur);
	t = now();
	int r2 = reg(fd, b, big, UFFDIO_REGISTER_MODE_WP);
	double t2 = now() - t;
	printf("register 1 TiB MISSING: %s %.3f ms; WP only: %s %.3f ms\n", r1 ? "failed" : "ok",
	       t1 * 1e3, r2 ? "failed" : "ok", t2 * 1e3);
	/* With WP-only registration a never-touched page is the kernel's to
	 * fill, so read(2) into it works; events (UNMAP, REMOVE, REMAP) are
	 * still reported.  A device-resident page needs MISSING, though. */
	int pfd[2];
	if (!r2 && pipe(pfd) == 0) {
		char msg[64] = "written by read(2)";
		ssize_t w = write(pfd[1], msg, sizeof msg);
		ssize_t rd = read(pfd[0], b + (big / 2), sizeof msg);
		printf("read(2) into a never-touched page, WP-only registration: %zd (%s)\n", rd,
		       rd == (ssize_t)sizeof msg && !strcmp(b + big / 2, msg) ? "data there" : "failed");
		(void)w;
	}
	ioctl(fd, UFFDIO_UNREGISTER, &ur);
	if (!reg(fd, b, big, UFFDIO_REGISTER_MODE_MISSING) && pipe(pfd) == 0) {
		char msg[64] = "x";
		ssize_t w = write(pfd[1], msg, sizeof msg);
		ssize_t rd = read(pfd[0], b + (big / 4), sizeof msg);
		printf("read(2) into a never-touched page, MISSING registration (SIGBUS feature): %zd (%m)\n", rd);
		(void)w;
	}
	return 0;
}
