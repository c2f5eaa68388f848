/* SPDX-License-Identifier: MIT */
/*
 * file_read / file_write: device access through a MAP_SHARED file mapping.
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(file_read),
		TEST_BOTH(file_write),
		TEST_ONE(file_read_past_eof),
	};
	return cmocka_run_group_tests_name("hmm_file", tests, NULL, NULL);
}
