/* SPDX-License-Identifier: MIT */
/*
 * Concurrency: many threads faulting device-resident pages at once, and
 * CPU writes racing migrations (never lost).  Worker threads never call
 * cmocka asserts; they count errors and the main thread checks.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "common.h"

#define NTHREADS 8
#define N 256

struct reader_ctx {
	void *p;
	size_t n;
	unsigned seed;
	int tid;
	bool same;               /* all threads read all pages vs. disjoint pages */
	pthread_barrier_t *bar;
	atomic_ulong *errors;
};

static void *reader(void *arg)
{
	struct reader_ctx *c = arg;
	size_t wpp = words_per_page();

	pthread_barrier_wait(c->bar);
	for (size_t k = 0; k < c->n; k++) {
		size_t i;
		if (c->same)
			i = k;                      /* everyone on the same page at once */
		else if (k % NTHREADS == (size_t)c->tid)
			i = k;                      /* my own pages */
		else
			continue;
		const volatile uint64_t *w = (const volatile uint64_t *)page_at(c->p, i);
		/* Start at a different word per thread so faults really overlap. */
		for (size_t jj = 0; jj < wpp; jj++) {
			size_t j = (jj + (size_t)c->tid * 61) % wpp;
			if (w[j] != pat(c->seed, i, j)) {
				atomic_fetch_add(c->errors, 1);
				break;
			}
		}
	}
	return NULL;
}

static void run_readers(struct uhmm *h, struct uhmm_device *d, void *p, bool same)
{
	pthread_t th[NTHREADS];
	struct reader_ctx ctx[NTHREADS];
	pthread_barrier_t bar;
	atomic_ulong errors = 0;

	for (unsigned round = 0; round < 5; round++) {
		unsigned seed = round + (same ? 0 : 100);
		fill_pages(p, 0, N, seed);
		assert_migrate(h, p, N * PS(), d, N, 0);
		assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
		assert_int_equal(pthread_barrier_init(&bar, NULL, NTHREADS), 0);
		for (int t = 0; t < NTHREADS; t++) {
			ctx[t] = (struct reader_ctx){ p, N, seed, t, same, &bar, &errors };
			assert_int_equal(pthread_create(&th[t], NULL, reader, &ctx[t]), 0);
		}
		for (int t = 0; t < NTHREADS; t++)
			pthread_join(th[t], NULL);
		pthread_barrier_destroy(&bar);
		assert_int_equal(atomic_load(&errors), 0);
		if (same)
			assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
		assert_pages(p, 0, N, seed);
		assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	}
}

/* 8 threads read the same pages of a device-resident range at once. */
static void threads_same_pages(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	run_readers(h, d, p, true);
	t_close(h);
}

/* 8 threads read disjoint pages of a device-resident range at once. */
static void threads_different_pages(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	run_readers(h, d, p, false);
	t_close(h);
}

/* Same, fault-around off (one page per fault: many more concurrent faults). */
static void threads_same_pages_nofa(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	run_readers(h, d, p, true);
	t_close(h);
}

/* ---------------------------------------------------------------------- */

#define RN 64 /* pages in the race tests */

struct writer_ctx {
	uint64_t *p;
	atomic_int *stop;
	atomic_ulong *errors;
	uint64_t last[RN];    /* last value written to word 0 of each page */
	unsigned long writes;
	int tid, nwriters;
};

/*
 * Word 0 of each page owned by this writer gets an increasing counter;
 * every write is read back at once, and the rest of the page is checked
 * now and then.  A lost write shows as a stale or zero value.
 */
static void *writer(void *arg)
{
	struct writer_ctx *c = arg;
	size_t wpp = words_per_page();
	uint64_t v = 0;

	while (!atomic_load_explicit(c->stop, memory_order_relaxed)) {
		for (size_t i = (size_t)c->tid; i < RN; i += (size_t)c->nwriters) {
			volatile uint64_t *w = (volatile uint64_t *)page_at(c->p, i);
			if (w[0] != c->last[i])
				atomic_fetch_add(c->errors, 1);
			v++;
			w[0] = v;
			c->last[i] = v;
			if (w[0] != v)
				atomic_fetch_add(c->errors, 1);
			if ((v & 15) == 0)
				for (size_t j = 1; j < wpp; j++)
					if (w[j] != pat(1, i, j)) {
						atomic_fetch_add(c->errors, 1);
						break;
					}
			c->writes++;
		}
	}
	return NULL;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * Writers race migrations to the device and back (and device reads) for a
 * bounded number of rounds (~1 s at most): no write is ever lost, no other
 * byte changes.
 */
static void race_writes(struct uhmm *h, int nwriters, bool with_device_reads)
{
	struct uhmm_device *d = t_dummy(h);
	uint64_t *p = t_alloc(h, RN);
	size_t wpp = words_per_page();
	pthread_t th[4];
	struct writer_ctx *ctx = calloc((size_t)nwriters, sizeof(*ctx));
	atomic_int stop = 0;
	atomic_ulong errors = 0;
	void *buf = malloc(RN * PS());
	unsigned long rounds = 0, migrated_dev = 0, migrated_sys = 0;

	assert_non_null(ctx);
	assert_non_null(buf);
	fill_pages(p, 0, RN, 1);
	for (size_t i = 0; i < RN; i++)
		p[i * wpp] = 0;
	for (int t = 0; t < nwriters; t++) {
		ctx[t].p = p;
		ctx[t].stop = &stop;
		ctx[t].errors = &errors;
		ctx[t].tid = t;
		ctx[t].nwriters = nwriters;
		assert_int_equal(pthread_create(&th[t], NULL, writer, &ctx[t]), 0);
	}

	double t0 = now_s();
	while (rounds < 20000 && now_s() - t0 < 1.0) {
		struct uhmm_migrate_result r;
		assert_int_equal(uhmm_migrate(h, p, RN * PS(), d, &r), 0);
		assert_int_equal(r.migrated + r.skipped, RN);
		migrated_dev += r.migrated;
		if (with_device_reads && (rounds & 1)) {
			/* Words other than word 0 are stable: check them on the device. */
			assert_int_equal(uhmm_dummy_read(d, p, buf, RN, NULL), 0);
			for (size_t i = 0; i < RN; i++)
				if (((uint64_t *)buf)[i * wpp + 1] != pat(1, i, 1))
					atomic_fetch_add(&errors, 1);
		}
		assert_int_equal(uhmm_migrate(h, p, RN * PS(), NULL, &r), 0);
		assert_int_equal(r.migrated + r.skipped, RN);
		migrated_sys += r.migrated;
		rounds++;
	}
	atomic_store(&stop, 1);
	for (int t = 0; t < nwriters; t++)
		pthread_join(th[t], NULL);

	unsigned long writes = 0;
	for (int t = 0; t < nwriters; t++)
		writes += ctx[t].writes;
	print_message("  %lu migration rounds, %lu pages to device, %lu to system, %lu writes\n",
	              rounds, migrated_dev, migrated_sys, writes);
	assert_int_equal(atomic_load(&errors), 0);
	assert_true(migrated_dev > 0);
	/* Final contents: the last value of each page, pattern elsewhere. */
	for (int t = 0; t < nwriters; t++) {
		assert_true(ctx[t].writes > 0);
		for (size_t i = (size_t)t; i < RN; i += (size_t)nwriters)
			assert_int_equal(p[i * wpp], ctx[t].last[i]);
	}
	for (size_t i = 0; i < RN; i++)
		for (size_t j = 1; j < wpp; j++)
			if (p[i * wpp + j] != pat(1, i, j)) {
				print_error("page %zu word %zu corrupted\n", i, j);
				fail();
			}
	/* And once more after a final migration round trip. */
	assert_migrate(h, p, RN * PS(), d, RN, 0);
	for (int t = 0; t < nwriters; t++)
		for (size_t i = (size_t)t; i < RN; i += (size_t)nwriters)
			assert_int_equal(p[i * wpp], ctx[t].last[i]);
	free(buf);
	free(ctx);
}

/* One CPU writer racing migrations. */
static void threads_write_race(void **state)
{
	struct uhmm *h = t_open(state);
	race_writes(h, 1, false);
	t_close(h);
}

/* Four writers racing migrations and device reads. */
static void threads_write_race_multi(void **state)
{
	struct uhmm *h = t_open(state);
	race_writes(h, 4, true);
	t_close(h);
}

/* The copy + unmap fallback path under the same race. */
static void threads_write_race_nomove(void **state)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.flags = UHMM_OPT_NO_MOVE;
	struct uhmm *h = t_open_opts(state, &o);
	race_writes(h, 2, false);
	assert_int_equal(t_stats(h).move_calls, 0);
	t_close(h);
}

/* ---------------------------------------------------------------------- */

struct mig_ctx {
	struct uhmm *h;
	struct uhmm_device *d;
	void *p;
	atomic_int *stop;
	atomic_ulong *errors;
};

static void *migrator(void *arg)
{
	struct mig_ctx *c = arg;
	while (!atomic_load(c->stop)) {
		struct uhmm_migrate_result r;
		if (uhmm_migrate(c->h, c->p, RN * PS(), c->d, &r) != 0 ||
		    r.migrated + r.skipped != RN)
			atomic_fetch_add(c->errors, 1);
		if (uhmm_migrate(c->h, c->p, RN * PS(), NULL, &r) != 0 ||
		    r.migrated + r.skipped != RN)
			atomic_fetch_add(c->errors, 1);
	}
	return NULL;
}

/*
 * Two devices' migrators and a migrator to system memory fight over one
 * range while the main thread reads it: the data never changes.
 */
static void threads_migrate_storm(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d1 = t_dummy(h), *d2 = t_dummy(h);
	void *p = t_alloc(h, RN);
	atomic_int stop = 0;
	atomic_ulong errors = 0;
	struct mig_ctx c1 = { h, d1, p, &stop, &errors }, c2 = { h, d2, p, &stop, &errors };
	pthread_t t1, t2;

	fill_pages(p, 0, RN, 7);
	assert_int_equal(pthread_create(&t1, NULL, migrator, &c1), 0);
	assert_int_equal(pthread_create(&t2, NULL, migrator, &c2), 0);
	double t0 = now_s();
	unsigned long bad = 0;
	for (int r = 0; r < 500 && now_s() - t0 < 1.0; r++)
		if (check_pages(p, 0, RN, 7) != -1)
			bad++;
	atomic_store(&stop, 1);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	assert_int_equal(bad, 0);
	assert_int_equal(atomic_load(&errors), 0);
	assert_migrate(h, p, RN * PS(), NULL, RN, 0);
	assert_states(h, p, 0, RN, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, RN, 7);
	t_close(h);
}

/* ---------------------------------------------------------------------- */

struct unmap_ctx {
	void *addr;
	size_t len;
	pthread_barrier_t *bar;
	int rc;
};

static void *unmapper(void *arg)
{
	struct unmap_ctx *c = arg;
	pthread_barrier_wait(c->bar);
	c->rc = munmap(c->addr, c->len);
	return NULL;
}

/*
 * Another thread unmaps half the buffer while the device reads it: no
 * crash, no hang; when the read succeeds its data is right.
 */
static void threads_teardown(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *buf = malloc(RN * PS());
	unsigned ok = 0, efault = 0;

	assert_non_null(buf);
	for (unsigned r = 0; r < 40; r++) {
		void *p = t_alloc(h, RN);
		pthread_barrier_t bar;
		pthread_t th;
		struct unmap_ctx c = { page_at(p, RN / 2), RN / 2 * PS(), &bar, -1 };

		fill_pages(p, 0, RN, 30 + r);
		if (r % 2)
			assert_migrate(h, p, RN * PS(), d, RN, 0);
		assert_int_equal(pthread_barrier_init(&bar, NULL, 2), 0);
		assert_int_equal(pthread_create(&th, NULL, unmapper, &c), 0);
		pthread_barrier_wait(&bar);
		int rc = uhmm_dummy_read(d, p, buf, RN, NULL);
		pthread_join(th, NULL);
		pthread_barrier_destroy(&bar);
		assert_int_equal(c.rc, 0);
		if (rc == 0) {
			ok++;
			assert_buf(buf, 0, RN, 30 + r);
		} else {
			assert_int_equal(rc, -EFAULT);
			efault++;
			/* The part that stayed mapped reads right. */
			assert_int_equal(uhmm_dummy_read(d, p, buf, RN / 2, NULL), 0);
			assert_buf(buf, 0, RN / 2, 30 + r);
		}
		assert_pages(p, 0, RN / 2, 30 + r);
		assert_int_equal(uhmm_free(h, p, RN / 2 * PS()), 0);
	}
	print_message("  %u reads succeeded, %u failed with -EFAULT\n", ok, efault);
	free(buf);
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(threads_same_pages),
		TEST_BOTH(threads_different_pages),
		TEST_BOTH(threads_same_pages_nofa),
		TEST_BOTH(threads_write_race),
		TEST_BOTH(threads_write_race_multi),
		TEST_BOTH(threads_write_race_nomove),
		TEST_BOTH(threads_migrate_storm),
		TEST_BOTH(threads_teardown),
	};
	return cmocka_run_group_tests_name("threads", tests, NULL, NULL);
}
