/* SPDX-License-Identifier: MIT */
/* UHMM_OPT_NO_MOVE: the copy + unmap fallback instead of UFFDIO_MOVE. */
#include "testdev.h"

#define N 256

static void run_round_trips(struct uhmm *h, struct uhmm_device *d, void *p, unsigned seed)
{
	for (unsigned r = 0; r < 3; r++) {
		fill_pages(p, 0, N, seed + r);
		assert_migrate(h, p, N * PS(), d, N, 0);
		assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
		/* Back through CPU faults on half, explicitly for the rest. */
		assert_pages(p, 0, N / 2, seed + r);
		assert_migrate(h, p, N * PS(), NULL, N, 0);
		assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
		assert_pages(p, 0, N, seed + r);
	}
}

/* Forced fallback: pages migrate by copy + unmap, never by a move. */
static void fallback_no_move(void **state)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.flags = UHMM_OPT_NO_MOVE;
	struct uhmm *h = t_open_opts(state, &o);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 1);
	assert_migrate(h, p, N * PS(), d, N, 0);
	struct uhmm_stats s = t_stats(h);
	assert_true(s.fallback_pages > 0);
	assert_int_equal(s.move_calls, 0);
	assert_pages(p, 0, N, 1);

	run_round_trips(h, d, p, 2);
	s = t_stats(h);
	assert_int_equal(s.move_calls, 0);
	assert_true(s.fallback_pages >= 4 * N);

	/* Device write / read through the fallback too. */
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	fill_buf(buf, 0, N, 9);
	assert_int_equal(uhmm_dummy_write(d, p, buf, N, NULL), 0);
	assert_migrate(h, p, N * PS(), d, N, 0);
	memset(buf, 0, N * PS());
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 9);
	assert_pages(p, 0, N, 9);
	assert_int_equal(t_stats(h).move_calls, 0);
	free(buf);
	t_close(h);
}

/* The environment variable does the same. */
static void fallback_env(void **state)
{
	assert_int_equal(setenv("UHMM_NO_MOVE", "1", 1), 0);
	struct uhmm *h = t_open(state);
	unsetenv("UHMM_NO_MOVE");
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 20);
	assert_migrate(h, p, N * PS(), d, N, 0);
	struct uhmm_stats s = t_stats(h);
	assert_true(s.fallback_pages > 0);
	assert_int_equal(s.move_calls, 0);
	assert_pages(p, 0, N, 20);
	t_close(h);
}

/* Where the kernel has UFFDIO_MOVE, the default path uses it, not the fallback. */
static void fallback_default_moves(void **state)
{
	struct uhmm_sysinfo si = UHMM_SYSINFO_INIT;
	assert_int_equal(uhmm_sysinfo_get(&si), 0);
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 30);
	assert_migrate(h, p, N * PS(), d, N, 0);
	struct uhmm_stats s = t_stats(h);
	if (si.caps & UHMM_SYS_MOVE) {
		assert_true(s.move_calls > 0);
		assert_int_equal(s.fallback_pages, 0);
	} else {
		assert_true(s.fallback_pages > 0);
	}
	run_round_trips(h, d, p, 31);
	t_close(h);
}

/* Fallback on a range mixing populated and never-populated pages. */
static void fallback_mixed(void **state)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.flags = UHMM_OPT_NO_MOVE;
	o.fault_around = 1;
	struct uhmm *h = t_open_opts(state, &o);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	/* Populate every third page. */
	for (size_t i = 0; i < N; i += 3)
		fill_pages(p, i, 1, 40);
	size_t pop = (N + 2) / 3;
	assert_migrate(h, p, N * PS(), d, pop, N - pop);
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_DEVICE), pop);
	for (size_t i = 0; i < N; i++) {
		if (i % 3 == 0)
			assert_pages(p, i, 1, 40);
		else
			assert_zero_pages(p, i, 1);
	}
	assert_int_equal(count_state(h, p, 0, N, UHMM_STATE_DEVICE), 0);
	assert_int_equal(t_stats(h).move_calls, 0);
	t_close(h);
}

/* Pages of an unregistered pool (no MOVE) that are resident, of npages. */
static size_t pool_resident(struct uhmm_devmem *m, size_t npages)
{
	size_t n = 0;
	for (size_t i = 0; i < npages; i++) {
		unsigned char vec = 0;
		void *a = uhmm_devmem_host_addr(m, i);
		assert_non_null(a);
		assert_int_equal(mincore(a, PS(), &vec), 0);
		n += vec & 1;
	}
	return n;
}

/* The host keeps no second copy: once pages come home (explicitly, by CPU
 * fault, or are freed on the device), their pool slots hold no memory. */
static void fallback_pool_bounded(void **state)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.flags = UHMM_OPT_NO_MOVE;
	struct uhmm *h = t_open_opts(state, &o);
	struct tdev *t = tdev_create(h, true, N);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 21);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	assert_int_equal(pool_resident(t->m, N), N); /* the data is there now */
	assert_pages(p, 0, N / 4, 21);               /* CPU faults: N/4 home */
	assert_migrate(h, p, N / 2 * PS(), NULL, N / 2, 0);
	assert_int_equal(pool_resident(t->m, N), N / 2);
	/* Freed while on the device: the slot is emptied too. */
	assert_int_equal(uhmm_free(h, page_at(p, N / 2), N / 2 * PS()), 0);
	assert_int_equal(pool_resident(t->m, N), 0);
	assert_pages(p, 0, N / 2, 21);
	t_close(h);
	tdev_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(fallback_no_move),
		TEST_BOTH(fallback_env),
		TEST_BOTH(fallback_default_moves),
		TEST_BOTH(fallback_mixed),
		TEST_BOTH(fallback_pool_bounded),
	};
	return cmocka_run_group_tests_name("fallback", tests, NULL, NULL);
}
