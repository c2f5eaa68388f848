/* SPDX-License-Identifier: MIT */
/*
 * file_read / file_write: device access through a MAP_SHARED file mapping;
 * file_private: entries of a MAP_PRIVATE one.
 * uhmm cannot manage file-backed memory (uhmm_range_add -EINVAL); the dummy
 * device reaches it through the process's own page tables (README "Device
 * access to unmanaged memory"), protections respected, nothing cached: the
 * file's contents are what the device reads and what it writes.
 */
#include <fcntl.h>

#include "hmm.h"

#define N 16

static int tmpfile_fd(void)
{
	char path[] = "/tmp/uhmm-hmm-file-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(ftruncate(fd, (off_t)(N * PS())), 0);
	return fd;
}

static void file_pwrite(int fd, size_t first, size_t n, unsigned seed)
{
	void *b = malloc(n * PS());
	assert_non_null(b);
	fill_buf(b, first, n, seed);
	assert_int_equal(pwrite(fd, b, n * PS(), (off_t)(first * PS())), (ssize_t)(n * PS()));
	free(b);
}

static void file_expect(int fd, size_t first, size_t n, unsigned seed)
{
	void *b = malloc(n * PS());
	assert_non_null(b);
	assert_int_equal(pread(fd, b, n * PS(), (off_t)(first * PS())), (ssize_t)(n * PS()));
	assert_buf(b, first, n, seed);
	free(b);
}

static void file_read(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	int fd = tmpfile_fd();
	void *buf = malloc(N * PS());
	uint8_t s[N];
	assert_non_null(buf);
	file_pwrite(fd, 0, N, 1);

	void *f = mmap(NULL, N * PS(), PROT_READ, MAP_SHARED, fd, 0);
	assert_true(f != MAP_FAILED);
	assert_int_equal(uhmm_range_add(h, f, N * PS()), -EINVAL);
	assert_int_equal(uhmm_migrate(h, f, N * PS(), d, NULL), -EINVAL);

	struct uhmm_dummy_counters c = { 0, 0 };
	assert_int_equal(uhmm_dummy_read(d, f, buf, N, &c), 0);
	assert_buf(buf, 0, N, 1);
	assert_int_equal(c.cpages, N);
	/* Read-only mapping: snapshot READ, device write -EPERM. */
	assert_int_equal(uhmm_dummy_snapshot(d, f, N, s), 0);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(s[i], UHMM_SNAP_READ);
	assert_int_equal(uhmm_dummy_write(d, f, buf, 1, NULL), -EPERM);

	/* The file changes behind the mapping: the device reads the new data. */
	file_pwrite(fd, 0, N / 2, 2);
	assert_int_equal(uhmm_dummy_read(d, f, buf, N, NULL), 0);
	assert_buf(buf, 0, N / 2, 2);
	assert_buf(page_at(buf, N / 2), N / 2, N / 2, 1);

	/* A private file mapping cannot be managed either; devices read it. */
	void *fp = mmap(NULL, N * PS(), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	assert_true(fp != MAP_FAILED);
	assert_int_equal(uhmm_range_add(h, fp, N * PS()), -EINVAL);
	assert_int_equal(uhmm_dummy_read(d, fp, buf, N, NULL), 0);
	assert_buf(buf, 0, N / 2, 2);

	assert_int_equal(munmap(fp, N * PS()), 0);
	assert_int_equal(munmap(f, N * PS()), 0);
	close(fd);
	free(buf);
	t_close(h);
}

/*
 * A shared file mapping past the end of the file: the pages are mapped
 * (PROT_READ) but have no data (the CPU would get SIGBUS): a device read
 * fails with -EFAULT, promptly (within a second).  Run in a child with an
 * alarm so that a slow failure costs the suite 3 s, not the library's
 * retry budget; the child has its own context.
 */
enum { E_OK = 0, E_OPEN = 10, E_MAP, E_RC, E_SLOW, E_DATA };

static void file_read_past_eof(void **state)
{
	enum uhmm_fault_mode mode = state_mode(state);
	int fd = tmpfile_fd();
	file_pwrite(fd, 0, N, 1);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(3);
		struct uhmm *h = child_open(mode);
		struct uhmm_device *d = NULL;
		static uint64_t buf[4096 / 8];
		if (!h || uhmm_dummy_create(h, NULL, &d) != 0)
			_exit(E_OPEN);
		void *f = mmap(NULL, N * PS(), PROT_READ, MAP_SHARED, fd, 0);
		if (f == MAP_FAILED || ftruncate(fd, (off_t)(N / 2 * PS())) != 0)
			_exit(E_MAP);
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		int rc = uhmm_dummy_read(d, page_at(f, N / 2), buf, 1, NULL);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (rc != -EFAULT)
			_exit(E_RC);
		if (t1.tv_sec - t0.tv_sec > 1)
			_exit(E_SLOW);
		if (uhmm_dummy_read(d, page_at(f, N / 2 - 1), buf, 1, NULL) != 0 ||
		    check_buf(buf, N / 2 - 1, 1, 1) != -1)
			_exit(E_DATA);
		uhmm_close(h);
		_exit(E_OK);
	}
	int st = wait_child(pid);
	if (st < 0)
		print_error("device read past EOF did not return within 3 s\n");
	assert_int_equal(st, E_OK);
	close(fd);
}

static void file_write(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h), *d2 = t_dummy(h);
	int fd = tmpfile_fd();
	void *buf = malloc(N * PS());
	uint8_t s[N];
	assert_non_null(buf);

	void *f = mmap(NULL, N * PS(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(f != MAP_FAILED);
	assert_int_equal(uhmm_range_add(h, f, N * PS()), -EINVAL);
	assert_int_equal(uhmm_dummy_snapshot(d, f, N, s), 0);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(s[i], UHMM_SNAP_WRITE);

	fill_buf(buf, 0, N, 3);
	assert_int_equal(uhmm_dummy_write(d, f, buf, N, NULL), 0);
	/* The file, the CPU mapping and another device see the write. */
	file_expect(fd, 0, N, 3);
	assert_pages(f, 0, N, 3);
	memset(buf, 0, N * PS());
	assert_int_equal(uhmm_dummy_read(d2, f, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 3);

	/* CPU writes through the mapping reach the device. */
	fill_pages(f, 0, N / 2, 4);
	assert_int_equal(uhmm_dummy_read(d, f, buf, N, NULL), 0);
	assert_buf(buf, 0, N / 2, 4);
	assert_buf(page_at(buf, N / 2), N / 2, N / 2, 3);
	assert_int_equal(msync(f, N * PS(), MS_SYNC), 0);
	file_expect(fd, 0, N / 2, 4);

	/* Protection changes are respected at once. */
	assert_int_equal(mprotect(f, N * PS(), PROT_READ), 0);
	assert_int_equal(uhmm_dummy_write(d, f, buf, 1, NULL), -EPERM);
	assert_int_equal(mprotect(f, N * PS(), PROT_NONE), 0);
	assert_int_equal(uhmm_dummy_read(d, f, buf, 1, NULL), -EFAULT);
	assert_int_equal(mprotect(f, N * PS(), PROT_READ | PROT_WRITE), 0);
	fill_buf(buf, 0, 1, 5);
	assert_int_equal(uhmm_dummy_write(d, f, buf, 1, NULL), 0);
	file_expect(fd, 0, 1, 5);

	assert_int_equal(munmap(f, N * PS()), 0);
	close(fd);
	free(buf);
	t_close(h);
}

/* This process's pagemap entry of the page at a. */
static uint64_t pm_entry(const void *a)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t e = 0;
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &e, sizeof(e), (off_t)((uintptr_t)a / PS() * sizeof(e))),
	                 (ssize_t)sizeof(e));
	close(fd);
	return e;
}

#define PM_PRESENT   (1ULL << 63)
#define PM_FILE      (1ULL << 61)
#define PM_EXCLUSIVE (1ULL << 56)

static void assert_flags(const struct uhmm_range_entry *e, size_t first, size_t n, unsigned want)
{
	for (size_t i = first; i < first + n; i++)
		if ((e[i].flags & (UHMM_ENTRY_VALID | UHMM_ENTRY_WRITE | UHMM_ENTRY_ERROR)) != want) {
			print_error("entry %zu: flags %#x, expected %#x\n", i, e[i].flags, want);
			fail();
		}
}

/*
 * file_private: unmanaged memory is reported from each page's own state,
 * as the kernel's hmm_range_fault reports its page table entry.  In a
 * private writable file mapping a page the CPU only read is the file's
 * page (not copied on write): read-only to a device, or a device write
 * would reach the file; so is an untouched page (it would be read from
 * the file), and the zero page of anonymous memory.  A page the CPU wrote
 * is its own: writable.  Faulting for write copies on write, as the CPU's
 * write fault does, with the data and the file unchanged.  A shared
 * mapping stays writable (writes are meant to reach the file).
 */
static void file_private(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	struct tdev *t = tdev_create(h, true, 16);
	struct uhmm_mirror_ops ops;
	struct uhmm_mirror *m = NULL;
	memset(&ops, 0, sizeof(ops));
	assert_int_equal(uhmm_mirror_register(t->dev, &ops, NULL, &m), 0);
	int fd = tmpfile_fd();
	file_pwrite(fd, 0, N, 1);
	struct uhmm_range_entry e[N];
	uint8_t s[N];
	void *buf = malloc(N * PS());
	assert_non_null(buf);

	void *f = mmap(NULL, N * PS(), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	assert_true(f != MAP_FAILED);
	/* 0-3 read by the CPU, 4-5 written, 6-15 untouched. */
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(touch_read(f, i), pat(1, i, 0));
	fill_pages(f, 4, 2, 2);
	assert_true(pm_entry(page_at(f, 0)) & PM_FILE);
	assert_false(pm_entry(page_at(f, 4)) & PM_FILE);

	memset(e, 0, sizeof(e));
	assert_int_equal(uhmm_range_fault(m, f, N, UHMM_RANGE_SNAPSHOT, e), 0);
	assert_flags(e, 0, 4, UHMM_ENTRY_VALID);
	assert_flags(e, 4, 2, UHMM_ENTRY_VALID | UHMM_ENTRY_WRITE);
	assert_flags(e, 6, N - 6, UHMM_ENTRY_VALID);
	/* Faulting for read changes nothing. */
	assert_int_equal(uhmm_range_fault(m, f, N, UHMM_RANGE_READ, e), 0);
	assert_flags(e, 0, 4, UHMM_ENTRY_VALID);
	assert_flags(e, 4, 2, UHMM_ENTRY_VALID | UHMM_ENTRY_WRITE);
	assert_flags(e, 6, N - 6, UHMM_ENTRY_VALID);

	/* Faulting for write: copied on write, nothing stored. */
	assert_int_equal(uhmm_range_fault(m, f, 8, UHMM_RANGE_WRITE, e), 0);
	assert_flags(e, 0, 8, UHMM_ENTRY_VALID | UHMM_ENTRY_WRITE);
	for (size_t i = 0; i < 8; i++) {
		uint64_t pe = pm_entry(page_at(f, i));
		assert_true(pe & PM_PRESENT);
		assert_false(pe & PM_FILE);
		assert_true(pe & PM_EXCLUSIVE);
	}
	assert_pages(f, 0, 4, 1);
	assert_pages(f, 4, 2, 2);
	assert_pages(f, 6, 2, 1);
	file_expect(fd, 0, N, 1);
	assert_int_equal(uhmm_range_fault(m, f, N, UHMM_RANGE_SNAPSHOT, e), 0);
	assert_flags(e, 0, 8, UHMM_ENTRY_VALID | UHMM_ENTRY_WRITE);
	assert_flags(e, 8, N - 8, UHMM_ENTRY_VALID);

	/* The dummy device: reads leave the pages the file's; a write
	 * copies them and the file keeps its data. */
	assert_int_equal(uhmm_dummy_read(d, page_at(f, 8), buf, 4, NULL), 0);
	assert_buf(buf, 8, 4, 1);
	assert_int_equal(uhmm_dummy_snapshot(d, page_at(f, 8), 4, s), 0);
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(s[i], UHMM_SNAP_READ);
	fill_buf(buf, 8, 2, 3);
	assert_int_equal(uhmm_dummy_write(d, page_at(f, 8), buf, 2, NULL), 0);
	assert_pages(f, 8, 2, 3);
	assert_pages(f, 10, 2, 1);
	file_expect(fd, 0, N, 1);
	assert_int_equal(uhmm_dummy_snapshot(d, page_at(f, 8), 4, s), 0);
	assert_int_equal(s[0], UHMM_SNAP_WRITE);
	assert_int_equal(s[1], UHMM_SNAP_WRITE);
	assert_int_equal(s[2], UHMM_SNAP_READ);
	assert_int_equal(s[3], UHMM_SNAP_READ);

	/* Anonymous memory: the zero page is read-only, an absent page not. */
	void *z = t_mmap(2);
	assert_int_equal(touch_read(z, 0), 0);
	assert_int_equal(uhmm_range_fault(m, z, 2, UHMM_RANGE_SNAPSHOT, e), 0);
	assert_flags(e, 0, 1, UHMM_ENTRY_VALID);
	assert_flags(e, 1, 1, UHMM_ENTRY_VALID | UHMM_ENTRY_WRITE);
	assert_int_equal(uhmm_range_fault(m, z, 1, UHMM_RANGE_WRITE, e), 0);
	assert_flags(e, 0, 1, UHMM_ENTRY_VALID | UHMM_ENTRY_WRITE);
	assert_int_equal(touch_read(z, 0), 0);

	/* A shared mapping's pages are writable: writes reach the file. */
	void *fs = mmap(NULL, N * PS(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(fs != MAP_FAILED);
	assert_int_equal(touch_read(fs, 0), pat(1, 0, 0));
	assert_int_equal(uhmm_range_fault(m, fs, N, UHMM_RANGE_SNAPSHOT, e), 0);
	assert_flags(e, 0, N, UHMM_ENTRY_VALID | UHMM_ENTRY_WRITE);

	assert_int_equal(munmap(fs, N * PS()), 0);
	assert_int_equal(munmap(z, 2 * PS()), 0);
	assert_int_equal(munmap(f, N * PS()), 0);
	close(fd);
	free(buf);
	assert_int_equal(uhmm_mirror_unregister(m), 0);
	t_close(h);
	tdev_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(file_read),
		TEST_BOTH(file_write),
		TEST_BOTH(file_private),
		TEST_ONE(file_read_past_eof),
	};
	return cmocka_run_group_tests_name("hmm_file", tests, NULL, NULL);
}
