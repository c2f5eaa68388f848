/* SPDX-License-Identifier: MIT */
/*
 * Kernel HMM scenarios on anonymous memory: anon_teardown,
 * anon_write_child, anon_write_child_shared.
 *
 * After fork the child's copy of managed memory is plain memory to it (a
 * context does not survive fork): the child opens its own context and
 * dummy device.  Its device reaches the inherited memory through the
 * unmanaged path (README "Device access to unmanaged memory").  MAP_SHARED
 * memory cannot be managed at all (uhmm_range_add -EINVAL), but a device
 * reaches it the same way, and then a write is visible to the other process.
 */
#include "hmm.h"

#define N 32

/* ---- anon_teardown ---- */

struct teardown {
	void *addr;
	size_t len;
	unsigned delay_us;
	atomic_int go;
	int rc;
};

static void *unmapper(void *arg)
{
	struct teardown *td = arg;
	while (!atomic_load(&td->go))
		;
	if (td->delay_us)
		usleep(td->delay_us);
	td->rc = munmap(td->addr, td->len);
	return NULL;
}

/*
 * Another thread unmaps the upper half of the buffer while a device reads
 * all of it, 100 rounds: never a crash or hang; a read that succeeds
 * returned the right data, one that fails says -EFAULT.  Some pages live on
 * the reading device, some on another one, the rest in system memory.
 */
static void anon_teardown(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *a = t_dummy(h), *b = t_dummy(h);
	void *buf = malloc(N * PS());
	unsigned ok = 0, failed = 0;
	assert_non_null(buf);

	for (unsigned r = 0; r < 100; r++) {
		void *p = t_alloc(h, N);
		fill_pages(p, 0, N, r);
		assert_migrate(h, page_at(p, 4), 8 * PS(), a, 8, 0);
		assert_migrate(h, page_at(p, 20), 8 * PS(), b, 8, 0);
		if (r % 3 == 0) /* half the buffer already mapped by the device */
			assert_int_equal(uhmm_dummy_read(a, p, buf, N / 2, NULL), 0);

		struct teardown td = { page_at(p, N / 2), N / 2 * PS(), (r % 5) * 20, 0, -1 };
		pthread_t th;
		assert_int_equal(pthread_create(&th, NULL, unmapper, &td), 0);
		memset(buf, 0xA5, N * PS());
		atomic_store(&td.go, 1);
		int rc = uhmm_dummy_read(a, p, buf, N, NULL);
		assert_int_equal(pthread_join(th, NULL), 0);
		assert_int_equal(td.rc, 0);
		if (rc == 0) {
			assert_buf(buf, 0, N, r);
			ok++;
		} else {
			assert_int_equal(rc, -EFAULT);
			failed++;
		}
		/* What is left is intact, for the CPU and the device. */
		assert_pages(p, 0, N / 2, r);
		memset(buf, 0, N / 2 * PS());
		assert_int_equal(uhmm_dummy_read(b, p, buf, N / 2, NULL), 0);
		assert_buf(buf, 0, N / 2, r);
		assert_int_equal(uhmm_dummy_read(a, page_at(p, N / 2), buf, 1, NULL), -EFAULT);
		assert_int_equal(uhmm_free(h, p, N / 2 * PS()), 0);
	}
	print_message("anon_teardown: %u reads succeeded, %u failed\n", ok, failed);
	free(buf);
	t_close(h);
}

/* ---- anon_write_child ---- */

enum { C_OK = 0, C_OPEN = 10, C_DUMMY, C_INHERIT, C_WRITE, C_CHECK, C_OWN, C_CLOSE, C_ADD,
       C_READ, C_PIPE };

/*
 * Private managed memory, half of it on the parent's device at fork.  The
 * child sees the parent's data, writes all of it with its own device; the
 * parent's memory (and the parent's device view of it) is unchanged.
 */
static void anon_write_child(void **state)
{
	SKIP_UNDER_TSAN_FORK();
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	fill_pages(p, 0, N, 1);
	assert_migrate(h, p, N / 2 * PS(), d, N / 2, 0);
	/* The parent's device maps it all before the fork. */
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 1);

	enum uhmm_fault_mode mode = state_mode(state);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(5);
		struct uhmm *h2 = child_open(mode);
		if (!h2)
			_exit(C_OPEN);
		struct uhmm_device *d2 = NULL;
		if (uhmm_dummy_create(h2, NULL, &d2) != 0)
			_exit(C_DUMMY);
		if (check_pages(p, 0, N, 1) != -1)
			_exit(C_INHERIT);
		/* The device writes the inherited (unmanaged to h2) memory. */
		fill_buf(buf, 0, N, 2);
		if (uhmm_dummy_write(d2, p, buf, N, NULL) != 0)
			_exit(C_WRITE);
		if (check_pages(p, 0, N, 2) != -1)
			_exit(C_CHECK);
		memset(buf, 0, N * PS());
		if (uhmm_dummy_read(d2, p, buf, N, NULL) != 0 || check_buf(buf, 0, N, 2) != -1)
			_exit(C_READ);
		if (uhmm_close(h2) != 0)
			_exit(C_CLOSE);
		_exit(C_OK);
	}
	assert_int_equal(wait_child(pid), C_OK);

	assert_pages(p, 0, N, 1);
	memset(buf, 0, N * PS());
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 1);
	/* Still fully usable in the parent. */
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_pages(p, 0, N, 1);
	free(buf);
	t_close(h);
}

/*
 * The child's own context and device work as in any process: its managed
 * memory migrates to its device and back.  (The parent's device memory was
 * not inherited: MADV_DONTFORK pools; their addresses are free in the child.)
 */
static void anon_child_context(void **state)
{
	SKIP_UNDER_TSAN_FORK();
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	fill_pages(p, 0, N, 6);
	assert_migrate(h, p, N * PS(), d, N, 0);

	enum uhmm_fault_mode mode = state_mode(state);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(5);
		struct uhmm *h2 = child_open(mode);
		struct uhmm_device *d2 = NULL;
		struct uhmm_migrate_result mr = { 0, 0 };
		void *q = NULL;
		if (!h2)
			_exit(C_OPEN);
		if (uhmm_dummy_create(h2, NULL, &d2) != 0)
			_exit(C_DUMMY);
		if (uhmm_alloc(h2, 4 * PS(), &q) != 0)
			_exit(C_OWN);
		fill_pages(q, 0, 4, 3);
		int r = uhmm_migrate(h2, q, 4 * PS(), d2, &mr);
		if (r != 0 || mr.migrated != 4) {
			fprintf(stderr, "child: uhmm_migrate of its own memory: %d, %zu migrated, "
			        "%zu skipped\n", r, mr.migrated, mr.skipped);
			_exit(C_OWN);
		}
		if (check_pages(q, 0, 4, 3) != -1 || check_pages(p, 0, N, 6) != -1)
			_exit(C_CHECK);
		if (uhmm_close(h2) != 0)
			_exit(C_CLOSE);
		_exit(C_OK);
	}
	assert_int_equal(wait_child(pid), C_OK);
	assert_pages(p, 0, N, 6);
	t_close(h);
}

/*
 * The inherited copy of managed memory is private anonymous memory in the
 * child: the child's own context can adopt it (the parent's context, dead
 * in the child, must not stand in the way), and migrate it.
 */
static void anon_child_adopts(void **state)
{
	SKIP_UNDER_TSAN_FORK();
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	fill_pages(p, 0, N, 4);
	assert_migrate(h, p, N / 2 * PS(), d, N / 2, 0);

	enum uhmm_fault_mode mode = state_mode(state);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(5);
		struct uhmm *h2 = child_open(mode);
		struct uhmm_device *d2 = NULL;
		struct uhmm_migrate_result mr;
		if (!h2)
			_exit(C_OPEN);
		if (uhmm_dummy_create(h2, NULL, &d2) != 0)
			_exit(C_DUMMY);
		int r = uhmm_range_add(h2, p, N * PS());
		if (r != 0) {
			fprintf(stderr, "child: uhmm_range_add of inherited memory: %d\n", r);
			_exit(C_ADD);
		}
		if (uhmm_migrate(h2, p, N * PS(), d2, &mr) != 0 || mr.migrated != N)
			_exit(C_OWN);
		fill_pages(p, 0, N / 2, 5);
		if (check_pages(p, 0, N / 2, 5) != -1 || check_pages(p, N / 2, N / 2, 4) != -1)
			_exit(C_CHECK);
		if (uhmm_close(h2) != 0)
			_exit(C_CLOSE);
		_exit(C_OK);
	}
	assert_int_equal(wait_child(pid), C_OK);
	assert_pages(p, 0, N, 4);
	t_close(h);
}

/* ---- anon_write_child_shared ---- */

/*
 * MAP_SHARED anonymous memory: uhmm cannot manage it (range_add -EINVAL),
 * but devices reach it through the unmanaged path.  A device write in the
 * child is visible to the parent (CPU and device, nothing cached), and the
 * parent's device write is visible to the child.
 */
static void anon_write_child_shared(void **state)
{
	SKIP_UNDER_TSAN_FORK();
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *s = mmap(NULL, N * PS(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	void *buf = malloc(N * PS());
	int to_child[2], to_parent[2];
	assert_true(s != MAP_FAILED);
	assert_non_null(buf);
	assert_int_equal(uhmm_range_add(h, s, N * PS()), -EINVAL);
	fill_pages(s, 0, N, 1);
	assert_int_equal(uhmm_dummy_read(d, s, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 1);
	assert_int_equal(pipe(to_child), 0);
	assert_int_equal(pipe(to_parent), 0);

	enum uhmm_fault_mode mode = state_mode(state);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char c;
		alarm(5);
		close(to_child[1]);
		close(to_parent[0]);
		struct uhmm *h2 = child_open(mode);
		struct uhmm_device *d2 = NULL;
		if (!h2)
			_exit(C_OPEN);
		if (uhmm_dummy_create(h2, NULL, &d2) != 0)
			_exit(C_DUMMY);
		if (check_pages(s, 0, N, 1) != -1)
			_exit(C_INHERIT);
		fill_buf(buf, 0, N, 2);
		if (uhmm_dummy_write(d2, s, buf, N, NULL) != 0)
			_exit(C_WRITE);
		if (write(to_parent[1], "x", 1) != 1 || read(to_child[0], &c, 1) != 1)
			_exit(C_PIPE);
		/* The parent's device wrote pages 0..N/2 with seed 3. */
		memset(buf, 0, N * PS());
		if (uhmm_dummy_read(d2, s, buf, N, NULL) != 0 || check_buf(buf, 0, N / 2, 3) != -1 ||
		    check_buf(page_at(buf, N / 2), N / 2, N / 2, 2) != -1)
			_exit(C_READ);
		if (check_pages(s, 0, N / 2, 3) != -1)
			_exit(C_CHECK);
		if (uhmm_close(h2) != 0)
			_exit(C_CLOSE);
		_exit(C_OK);
	}
	char c;
	close(to_child[0]);
	close(to_parent[1]);
	assert_int_equal(read(to_parent[0], &c, 1), 1);
	/* The child's device write is visible here, to the CPU and the device. */
	assert_pages(s, 0, N, 2);
	memset(buf, 0, N * PS());
	assert_int_equal(uhmm_dummy_read(d, s, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 2);
	fill_buf(buf, 0, N / 2, 3);
	assert_int_equal(uhmm_dummy_write(d, s, buf, N / 2, NULL), 0);
	assert_int_equal(write(to_child[1], "y", 1), 1);
	assert_int_equal(wait_child(pid), C_OK);
	close(to_child[1]);
	close(to_parent[0]);
	assert_pages(s, 0, N / 2, 3);
	assert_pages(s, N / 2, N / 2, 2);
	assert_int_equal(munmap(s, N * PS()), 0);
	free(buf);
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(anon_teardown),
		TEST_BOTH(anon_write_child),
		TEST_BOTH(anon_child_context),
		TEST_BOTH(anon_child_adopts),
		TEST_BOTH(anon_write_child_shared),
	};
	return cmocka_run_group_tests_name("hmm_anon", tests, NULL, NULL);
}
