/* SPDX-License-Identifier: MIT */
/*
 * A device that is not host-backed: uhmm must go through its
 * copy_to_device / copy_from_device ops (device memory here is a malloc'd
 * array of pages indexed by page index), both ways, and survive failures.
 */
#include <sys/wait.h>

#include "testdev.h"

#define N 32
#define DEVPAGES 64

/* Migration both ways through the copy path; the data really lives in the device. */
static void copydev_migrate(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, DEVPAGES);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 1);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, t->dev);
	assert_int_equal(atomic_load(&t->to_pages), N);
	assert_true(atomic_load(&t->to_calls) >= 1);
	assert_int_equal(uhmm_devmem_used(t->m), N);
	assert_int_equal(tdev_count_pattern_pages(t, N, 1), N);
	assert_freed_once(t, 0);

	/* Back through CPU faults: copy_from_device for every page. */
	assert_pages(p, 0, N, 1);
	assert_int_equal(atomic_load(&t->from_pages), N);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_freed_once(t, N);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);

	/* Explicit migration back. */
	tdev_reset_counts(t);
	fill_pages(p, 0, N, 2);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	assert_int_equal(tdev_count_pattern_pages(t, N, 2), N);
	assert_migrate(h, p, N * PS(), NULL, N, 0);
	assert_int_equal(atomic_load(&t->from_pages), 2 * N);
	assert_freed_once(t, N);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, N, 2);

	/* The device pages were really the source: change them on the
	 * device side, the CPU sees the device's data. */
	tdev_reset_counts(t);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	size_t changed = 0;
	for (size_t d = 0; d < DEVPAGES; d++) {
		uint64_t *w = (uint64_t *)(t->store + d * PS());
		for (size_t i = 0; i < N; i++)
			if (w[0] == pat(2, i, 0) && w[1] == pat(2, i, 1)) {
				fill_buf(w, i, 1, 3);
				changed++;
				break;
			}
	}
	assert_int_equal(changed, N);
	assert_pages(p, 0, N, 3);
	assert_freed_once(t, N);
	t_close(h);
	assert_int_equal(atomic_load(&t->ndestroy), 1);
	tdev_free(t);
}

/* A CPU write to device-resident pages: data comes back, then the write. */
static void copydev_cpu_write(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, DEVPAGES);
	uint64_t *p = t_alloc(h, N);
	size_t wpp = words_per_page();

	fill_pages(p, 0, N, 4);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	for (size_t i = 0; i < N; i++)
		p[i * wpp + 7] = ~(uint64_t)i;
	for (size_t i = 0; i < N; i++)
		for (size_t j = 0; j < wpp; j++) {
			uint64_t exp = j == 7 ? ~(uint64_t)i : pat(4, i, j);
			if (p[i * wpp + j] != exp) {
				print_error("page %zu word %zu\n", i, j);
				fail();
			}
		}
	assert_freed_once(t, N);
	t_close(h);
	tdev_free(t);
}

/* copy_to_device fails: every page skipped, stays in system memory, nothing leaks. */
static void copydev_fail_to(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, DEVPAGES);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 5);
	atomic_store(&t->fail_to, TDEV_FAIL_ALWAYS);
	assert_migrate(h, p, N * PS(), t->dev, 0, N);
	assert_true(atomic_load(&t->to_tries) >= 1);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_int_equal(atomic_load(&t->bad), 0);
	assert_pages(p, 0, N, 5);

	/* Half the calls fail: what was copied is on the device, the rest is
	 * in system memory, counts agree with the states, no data lost. */
	atomic_store(&t->fail_to, TDEV_FAIL_ODD);
	struct uhmm_migrate_result r;
	assert_int_equal(uhmm_migrate(h, p, N * PS(), t->dev, &r), 0);
	assert_int_equal(r.migrated + r.skipped, N);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_DEVICE), r.migrated);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_SYSTEM), r.skipped);
	assert_int_equal(uhmm_devmem_used(t->m), r.migrated);
	assert_int_equal(tdev_count_pattern_pages(t, N, 5) >= r.migrated, 1);
	assert_pages(p, 0, N, 5);
	assert_int_equal(uhmm_devmem_used(t->m), 0);

	atomic_store(&t->fail_to, TDEV_OK);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	assert_pages(p, 0, N, 5);
	assert_int_equal(atomic_load(&t->bad), 0);
	t_close(h);
	tdev_free(t);
}

/* copy_from_device fails: explicit migration back skips, pages stay on the device. */
static void copydev_fail_from(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, DEVPAGES);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 6);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	atomic_store(&t->fail_from, TDEV_FAIL_ALWAYS);
	assert_migrate(h, p, N * PS(), NULL, 0, N);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, t->dev);
	assert_int_equal(uhmm_devmem_used(t->m), N);
	assert_int_equal(tdev_count_pattern_pages(t, N, 6), N);
	assert_freed_once(t, 0);

	atomic_store(&t->fail_from, TDEV_FAIL_ODD);
	struct uhmm_migrate_result r;
	assert_int_equal(uhmm_migrate(h, p, N * PS(), NULL, &r), 0);
	assert_int_equal(r.migrated + r.skipped, N);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_SYSTEM), r.migrated);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_DEVICE), r.skipped);
	assert_int_equal(uhmm_devmem_used(t->m), r.skipped);
	assert_freed_once(t, r.migrated);

	atomic_store(&t->fail_from, TDEV_OK);
	assert_migrate(h, p, N * PS(), NULL, N, 0);
	assert_freed_once(t, N);
	assert_pages(p, 0, N, 6);
	t_close(h);
	tdev_free(t);
}

/* Migration between a copy device and a host-backed one (through system memory). */
static void copydev_two_kinds(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *c = tdev_create(h, false, DEVPAGES);
	struct tdev *t = tdev_create(h, true, DEVPAGES);
	struct uhmm_device *dm = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 7);
	assert_migrate(h, p, N / 2 * PS(), c->dev, N / 2, 0);
	assert_migrate(h, p, N * PS(), t->dev, N / 2, N / 2);
	assert_states(h, p, 0, N / 2, UHMM_STATE_DEVICE, c->dev);
	assert_states(h, p, N / 2, N / 2, UHMM_STATE_DEVICE, t->dev);

	/* The dummy reads both (they come back through system memory). */
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_read(dm, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 7);
	free(buf);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_DEVICE), 0);
	assert_freed_once(c, N / 2);
	assert_freed_once(t, N / 2);

	assert_migrate(h, p, N * PS(), c->dev, N, 0);
	assert_pages(p, 0, N, 7);
	t_close(h);
	tdev_free(c);
	tdev_free(t);
}

static bool have_move(void)
{
	struct uhmm_sysinfo si = UHMM_SYSINFO_INIT;
	return uhmm_sysinfo_get(&si) == 0 && (si.caps & UHMM_SYS_MOVE);
}

/* Where the kernel has UFFDIO_MOVE, pages reach a copy device through the
 * move-staging area: taken out of the page table, then copied; no page
 * goes through the copy fallback (write-protect, read, discard). */
static void copydev_staged(void **state)
{
	if (!have_move())
		skip();
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, 1024);
	void *p = t_alloc(h, 700); /* more than one batch of 512 */

	fill_pages(p, 0, 700, 8);
	struct uhmm_stats s0 = t_stats(h);
	assert_migrate(h, p, 700 * PS(), t->dev, 700, 0);
	struct uhmm_stats s1 = t_stats(h);
	assert_int_equal(s1.pages_staged - s0.pages_staged, 700);
	assert_int_equal(s1.fallback_pages - s0.fallback_pages, 0);
	assert_true(s1.move_calls - s0.move_calls >= 2);
	assert_int_equal(atomic_load(&t->to_pages), 700);
	assert_int_equal(tdev_count_pattern_pages(t, 700, 8), 700);
	assert_states(h, p, 0, 700, UHMM_STATE_DEVICE, t->dev);
	/* A second migration reuses the (emptied) staging slots. */
	assert_migrate(h, p, 700 * PS(), NULL, 700, 0);
	assert_migrate(h, p, 700 * PS(), t->dev, 700, 0);
	assert_int_equal(t_stats(h).pages_staged - s0.pages_staged, 1400);
	assert_pages(p, 0, 700, 8);
	assert_int_equal(atomic_load(&t->bad), 0);
	t_close(h);
	tdev_free(t);
}

/* With UHMM_OPT_NO_MOVE every page goes through the copy fallback. */
static void copydev_no_move(void **state)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	o.flags = UHMM_OPT_NO_MOVE;
	struct uhmm *h = t_open_opts(state, &o);
	struct tdev *t = tdev_create(h, false, DEVPAGES);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 9);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	struct uhmm_stats s = t_stats(h);
	assert_int_equal(s.pages_staged, 0);
	assert_int_equal(s.fallback_pages, N);
	assert_int_equal(tdev_count_pattern_pages(t, N, 9), N);
	assert_pages(p, 0, N, 9);
	t_close(h);
	tdev_free(t);
}

/* After a fork every private page is shared with the child (even once it
 * has exited) and UFFDIO_MOVE refuses it: uhmm write-faults it (same data)
 * and moves it, rather than copy and discard by address. */
static void copydev_after_fork(void **state)
{
	if (!have_move())
		skip();
	SKIP_UNDER_TSAN_FORK();
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, DEVPAGES);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 10);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(check_pages(p, 0, N, 10) == -1 ? 0 : 1);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

	struct uhmm_stats s0 = t_stats(h);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	struct uhmm_stats s1 = t_stats(h);
	assert_int_equal(s1.pages_unshared - s0.pages_unshared, N);
	assert_int_equal(s1.pages_staged - s0.pages_staged, N);
	assert_int_equal(s1.fallback_pages - s0.fallback_pages, 0);
	assert_int_equal(tdev_count_pattern_pages(t, N, 10), N);
	assert_pages(p, 0, N, 10);
	t_close(h);
	tdev_free(t);
}

/* The dummy device in copy mode: what it refuses, and that it really is
 * a copy device (its pages go through staging or the fallback, its reads
 * see the data). */
static void copydev_dummy_copy_mode(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = NULL;
	struct uhmm_dummy_options o = UHMM_DUMMY_OPTIONS_INIT;
	o.flags = 1u << 7;
	assert_int_equal(uhmm_dummy_create(h, &o, &d), -EINVAL);
	o.flags = UHMM_DUMMY_COPY_DEVICE;
	o.devmem_flags = UHMM_DEVMEM_DEVICE | UHMM_DEVMEM_ALLOW_MIGRATION; /* coherent */
	assert_int_equal(uhmm_dummy_create(h, &o, &d), -EINVAL);
	o.devmem_flags = 0;
	o.path = "/tmp/uhmm-copydev-none";
	assert_int_equal(uhmm_dummy_create(h, &o, &d), -EINVAL);
	o.path = NULL;
	assert_int_equal(uhmm_dummy_create(h, &o, &d), 0);
	assert_int_equal(uhmm_dummy_set_fail(d, 1u << 9), -EINVAL);

	void *p = t_alloc(h, N);
	fill_pages(p, 0, N, 13);
	struct uhmm_stats s0 = t_stats(h);
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	struct uhmm_stats s1 = t_stats(h);
	assert_int_equal((s1.pages_staged - s0.pages_staged) + (s1.fallback_pages - s0.fallback_pages),
	                 N);
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 13);
	free(buf);
	assert_pages(p, 0, N, 13);
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(copydev_migrate),
		TEST_BOTH(copydev_cpu_write),
		TEST_BOTH(copydev_fail_to),
		TEST_BOTH(copydev_fail_from),
		TEST_BOTH(copydev_two_kinds),
		TEST_BOTH(copydev_staged),
		TEST_BOTH(copydev_no_move),
		TEST_BOTH(copydev_after_fork),
		TEST_BOTH(copydev_dummy_copy_mode),
	};
	return cmocka_run_group_tests_name("copydev", tests, NULL, NULL);
}
