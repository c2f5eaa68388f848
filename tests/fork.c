/* SPDX-License-Identifier: MIT */
/*
 * fork(): the child sees exactly the parent's data, device-resident pages
 * included; the two stay private to each other.  The child checks with
 * plain code and reports through its exit status (no cmocka in the child).
 */
#include <sys/wait.h>

#include "common.h"

#define N 128

enum { CHILD_OK = 0, CHILD_BAD_DEV = 10, CHILD_BAD_SYS, CHILD_BAD_NONE, CHILD_BAD_WRITE,
       CHILD_BAD_PIPE, CHILD_BAD_AFTER };

static int wait_child(pid_t pid)
{
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (!WIFEXITED(st)) {
		print_error("child died: signal %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
		return -1;
	}
	return WEXITSTATUS(st);
}

/*
 * Pages 0..N/2 on the device, N/2..3N/4 in system memory, the last quarter
 * never touched.  Fork: the child sees all of it, writes its own copy; the
 * parent's data is unchanged.
 */
static void fork_device_resident(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, 3 * N / 4, 1);
	assert_migrate(h, p, N / 2 * PS(), d, N / 2, 0);

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(30); /* never hang the suite */
		if (check_pages(p, 0, N / 2, 1) != -1)
			_exit(CHILD_BAD_DEV);
		if (check_pages(p, N / 2, N / 4, 1) != -1)
			_exit(CHILD_BAD_SYS);
		if (check_zero(p, 3 * N / 4, N / 4) != -1)
			_exit(CHILD_BAD_NONE);
		fill_pages(p, 0, N, 2);
		if (check_pages(p, 0, N, 2) != -1)
			_exit(CHILD_BAD_WRITE);
		_exit(CHILD_OK);
	}
	assert_int_equal(wait_child(pid), CHILD_OK);

	assert_pages(p, 0, 3 * N / 4, 1);
	assert_zero_pages(p, 3 * N / 4, N / 4);

	/* Still usable with uhmm in the parent. */
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	assert_pages(p, 0, 3 * N / 4, 1);
	t_close(h);
}

/*
 * Migrate, fork; the parent migrates and writes new data while the child
 * is alive, the child then still sees the data of the fork.
 */
static void fork_cow_in_device(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	int to_child[2], to_parent[2];

	fill_pages(p, 0, N, 3);
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_int_equal(pipe(to_child), 0);
	assert_int_equal(pipe(to_parent), 0);

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char c;
		int bad = CHILD_OK;
		alarm(30);
		close(to_child[1]);
		close(to_parent[0]);
		if (check_pages(p, 0, N, 3) != -1)
			bad = CHILD_BAD_DEV;
		/* Tell the parent, wait until it has changed its copy. */
		if (write(to_parent[1], "x", 1) != 1 || read(to_child[0], &c, 1) != 1)
			_exit(CHILD_BAD_PIPE);
		if (bad == CHILD_OK && check_pages(p, 0, N, 3) != -1)
			bad = CHILD_BAD_AFTER;
		_exit(bad);
	}
	char c;
	close(to_child[0]);
	close(to_parent[1]);
	assert_int_equal(read(to_parent[0], &c, 1), 1);
	/* Parent: new data on half, migrated to the device and faulted back. */
	fill_pages(p, 0, N / 2, 4);
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_pages(p, 0, N / 2, 4);
	assert_pages(p, N / 2, N / 2, 3);
	assert_int_equal(write(to_child[1], "y", 1), 1);
	assert_int_equal(wait_child(pid), CHILD_OK);
	close(to_child[1]);
	close(to_parent[0]);

	assert_pages(p, 0, N / 2, 4);
	assert_pages(p, N / 2, N / 2, 3);
	t_close(h);
}

/* Several forks in a row, with migrations in between. */
static void fork_multiple(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	for (unsigned r = 0; r < 4; r++) {
		fill_pages(p, 0, N, 10 + r);
		assert_migrate(h, p, N * PS(), d, N, 0);
		fflush(NULL);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			alarm(30);
			_exit(check_pages(p, 0, N, 10 + r) == -1 ? CHILD_OK : CHILD_BAD_DEV);
		}
		assert_int_equal(wait_child(pid), CHILD_OK);
		assert_pages(p, 0, N, 10 + r);
	}
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(fork_device_resident),
		TEST_BOTH(fork_cow_in_device),
		TEST_BOTH(fork_multiple),
	};
	return cmocka_run_group_tests_name("fork", tests, NULL, NULL);
}
