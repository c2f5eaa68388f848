/* SPDX-License-Identifier: MIT */
/*
 * Fault injection: the dummy device's UHMM_DUMMY_FAIL_* flags, a copy
 * device whose copies fail at random, device loss, and hot-removal of
 * device memory / destruction of a device while other threads fault and
 * migrate.  In every case: no half-migrated page, data intact (or, for a
 * lost device, SIGBUS — never zeros), the call reports skipped pages.
 */
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#include "testdev.h"

#define N 64

/* ---- allocation failure: pages stay in system memory, counted skipped ---- */
static void inject_fail_alloc(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 1);
	uint64_t skipped0 = t_stats(h).pages_skipped;
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_FAIL_ALLOC), 0);
	assert_migrate(h, p, N * PS(), d, 0, N);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_true(t_stats(h).pages_skipped >= skipped0 + N);
	assert_pages(p, 0, N, 1);
	/* Device writes still work on system pages (no allocation needed). */
	void *buf = malloc(PS());
	assert_non_null(buf);
	fill_buf(buf, 3, 1, 2);
	assert_int_equal(uhmm_dummy_write(d, page_at(p, 3), buf, 1, NULL), 0);
	fill_pages(p, 3, 1, 2);
	free(buf);
	/* Cleared: everything moves, data intact. */
	assert_int_equal(uhmm_dummy_set_fail(d, 0), 0);
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	assert_pages(p, 0, 3, 1);
	assert_pages(p, 3, 1, 2);
	assert_pages(p, 4, N - 4, 1);
	t_close(h);
}

/* ---- copy failure, system → device ---- */
static void inject_fail_copy_to(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 3);
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_FAIL_COPY), 0);
	for (int round = 0; round < 3; round++) {
		assert_migrate(h, p, N * PS(), d, 0, N);
		assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	}
	/* Partly on the device already: those count as migrated, the rest skip. */
	assert_int_equal(uhmm_dummy_set_fail(d, 0), 0);
	assert_migrate(h, p, N / 2 * PS(), d, N / 2, 0);
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_FAIL_COPY), 0);
	struct uhmm_migrate_result r = { 0, 0 };
	assert_int_equal(uhmm_migrate(h, p, N * PS(), d, &r), 0);
	assert_int_equal(r.migrated + r.skipped, N);
	assert_int_equal(r.skipped, N / 2);
	assert_int_equal(uhmm_dummy_set_fail(d, 0), 0);
	assert_pages(p, 0, N, 3);
	t_close(h);
}

/* SIGBUS catching for the copy-from test (installed before uhmm_open, so
 * uhmm chains to it for what it does not handle). */
static sigjmp_buf jb;
static volatile sig_atomic_t nbus;

static void on_bus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	nbus++;
	siglongjmp(jb, 1);
}

static bool read_sigbus(const void *a, uint64_t *v)
{
	if (sigsetjmp(jb, 1) == 0) {
		*v = *(const volatile uint64_t *)a;
		return false;
	}
	return true;
}

/* ---- copy failure, device → system ---- */
static void inject_fail_copy_from(void **state)
{
	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_bus;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGBUS, &sa, &old), 0);

	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 4);
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_FAIL_COPY), 0);
	/* Explicit migration home: every page skipped, still on the device. */
	assert_migrate(h, p, N * PS(), NULL, 0, N);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	/* Device reads of its own pages need no copy home. */
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 4);
	free(buf);
	/* A CPU touch cannot bring the page home: SIGBUS, never zeros, and
	 * the data stays on the device. */
	uint64_t v = 0;
	nbus = 0;
	assert_true(read_sigbus(page_at(p, 5), &v));
	assert_int_equal(nbus, 1);
	assert_states(h, p, 5, 1, UHMM_STATE_DEVICE, d);
	/* Release cannot bring pages home either: -EBUSY, nothing lost. */
	assert_int_equal(uhmm_dummy_release(d), -EBUSY);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	/* Cleared: everything comes home intact. */
	assert_int_equal(uhmm_dummy_set_fail(d, 0), 0);
	assert_migrate(h, p, N / 2 * PS(), NULL, N / 2, 0);
	assert_pages(p, 0, N, 4); /* the rest by CPU faults */
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	t_close(h);
	assert_int_equal(sigaction(SIGBUS, &old, NULL), 0);
}

/* ---- device lost: poisoned pages raise SIGBUS in a child, never zeros ---- */
static int child_touch(void *addr, bool write)
{
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		signal(SIGBUS, SIG_DFL);
		if (write) {
			*(volatile uint64_t *)addr = 7;
			_exit(3);
		}
		uint64_t v = *(volatile uint64_t *)addr;
		_exit(v == 0 ? 1 : 2); /* 1: silent zeros */
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	return st;
}

static void inject_lost(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h), *d2 = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 5);
	assert_migrate(h, p, N / 2 * PS(), d, N / 2, 0);
	assert_migrate(h, page_at(p, N / 2), N / 4 * PS(), d2, N / 4, 0);
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_LOST), 0);
	assert_states(h, p, 0, N / 2, UHMM_STATE_POISONED, NULL);
	assert_states(h, p, N / 2, N / 4, UHMM_STATE_DEVICE, d2);

	/* Touching a poisoned page (read or write) kills the toucher with SIGBUS. */
	int st = child_touch(page_at(p, 1), false);
	if (!WIFSIGNALED(st))
		print_error("child read of a poisoned page: exit status %d (1 = read zeros)\n",
		            WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGBUS);
	st = child_touch(page_at(p, 2), true);
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGBUS);

	/* The healthy pages: on the other device and in system memory, intact
	 * (in the child too: fork brings them home first). */
	st = child_touch(page_at(p, N / 2), false);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 2);
	assert_pages(p, N / 2, N / 2, 5);
	/* Still poisoned in the parent; migrations skip them. */
	assert_states(h, p, 0, N / 2, UHMM_STATE_POISONED, NULL);
	assert_migrate(h, p, N * PS(), d2, N / 2, N / 2);
	assert_int_equal(uhmm_free(h, p, N * PS()), 0);
	assert_int_equal(uhmm_device_destroy(d), 0);
	t_close(h);
}

/* ---- a copy device whose copies fail at random ---- */
static atomic_uint rnd_state = 12345;

static bool rnd_fail(void)
{
	unsigned x = atomic_fetch_add(&rnd_state, 0x9E3779B9u);
	x ^= x >> 15;
	x *= 0x2c1b3c6dU;
	x ^= x >> 12;
	return (x % 3) == 0; /* one call in three fails */
}

static atomic_ulong rnd_fail_to, rnd_fail_from;

static int flaky_to(struct uhmm_device *d, struct uhmm_devmem *m, const size_t *idx,
                    const void *src, size_t n)
{
	if (rnd_fail()) {
		atomic_fetch_add(&rnd_fail_to, 1);
		return -EIO;
	}
	return tdev_copy_to(d, m, idx, src, n);
}

static int flaky_from(struct uhmm_device *d, void *dst, struct uhmm_devmem *m, const size_t *idx,
                      size_t n)
{
	if (rnd_fail()) {
		atomic_fetch_add(&rnd_fail_from, 1);
		return -EIO;
	}
	return tdev_copy_from(d, dst, m, idx, n);
}

static void inject_flaky_copy_device(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct tdev *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	t->npages = 2 * N;
	t->freed = calloc(t->npages, sizeof(*t->freed));
	t->store = malloc(t->npages * PS());
	assert_non_null(t->freed);
	assert_non_null(t->store);
	struct uhmm_device_ops ops;
	memset(&ops, 0, sizeof(ops));
	ops.copy_to_device = flaky_to;
	ops.copy_from_device = flaky_from;
	ops.page_free = tdev_page_free;
	assert_int_equal(uhmm_device_create(h, "flaky", &ops, 0, t, &t->dev), 0);
	assert_int_equal(uhmm_devmem_add(t->dev, t->npages * PS(),
	                                 UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE, &t->m),
	                 0);
	void *p = t_alloc(h, N);
	size_t skipped = 0;
	for (unsigned round = 0; round < 40; round++) {
		fill_pages(p, 0, N, 100 + round);
		struct uhmm_migrate_result r;
		for (int k = 0; k < 3; k++) {
			assert_int_equal(uhmm_migrate(h, p, N * PS(), t->dev, &r), 0);
			assert_int_equal(r.migrated + r.skipped, N);
			skipped += r.skipped;
		}
		/* Every page is either on the device or in system memory, whole. */
		size_t on_dev = count_state(h, p, 0, N, UHMM_STATE_DEVICE);
		size_t on_sys = count_state(h, p, 0, N, UHMM_STATE_SYSTEM);
		assert_int_equal(on_dev + on_sys, N);
		assert_int_equal(uhmm_devmem_used(t->m), on_dev);
		/* Home again (retrying what failed), then the CPU checks. */
		for (int k = 0; k < 100; k++) {
			assert_int_equal(uhmm_migrate(h, p, N * PS(), NULL, &r), 0);
			assert_int_equal(r.migrated + r.skipped, N);
			skipped += r.skipped;
			if (r.migrated == N)
				break;
		}
		assert_int_equal(r.migrated, N);
		assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
		assert_pages(p, 0, N, 100 + round);
	}
	assert_true(atomic_load(&rnd_fail_to) > 0);
	assert_true(atomic_load(&rnd_fail_from) > 0);
	assert_true(skipped > 0);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_int_equal(atomic_load(&t->bad), 0);
	print_message("flaky copy device: %lu failed copies to, %lu from, %zu pages skipped\n",
	              atomic_load(&rnd_fail_to), atomic_load(&rnd_fail_from), skipped);
	t_close(h);
	tdev_free(t);
}

/* ---- hot-remove and destroy while other threads fault and migrate ---- */
#define SLICE   32
#define WORKERS 2

struct race {
	struct uhmm *h;
	char *p;                     /* WORKERS slices of SLICE pages */
	struct uhmm_device *other;   /* a device that stays */
	struct uhmm_device *victim;  /* used by workers only while victim_ok */
	atomic_bool stop, victim_ok, migrator_idle;
	atomic_ulong errors, rounds;
	unsigned gen[WORKERS];
};

struct rarg {
	struct race *r;
	int id;
};

static void *race_worker(void *arg)
{
	struct rarg *a = arg;
	struct race *r = a->r;
	char *s = r->p + (size_t)a->id * SLICE * PS();
	unsigned gen = r->gen[a->id];
	unsigned long it = 0;
	while (!atomic_load(&r->stop)) {
		/* Check (CPU faults bring pages home from wherever they are). */
		if (check_pages(s, 0, SLICE, gen) != -1) {
			atomic_fetch_add(&r->errors, 1);
			break;
		}
		gen = 1000 + (unsigned)a->id * 100000 + (unsigned)it;
		fill_pages(s, 0, SLICE, gen);
		r->gen[a->id] = gen;
		struct uhmm_migrate_result res;
		struct uhmm_device *to = (it % 3 == 0) ? r->other : NULL;
		int rc = uhmm_migrate(r->h, s, SLICE * PS(), to, &res);
		if (rc || res.migrated + res.skipped != SLICE)
			atomic_fetch_add(&r->errors, 1);
		it++;
		atomic_fetch_add(&r->rounds, 1);
	}
	return NULL;
}

/* Migrates the slices of the others to the victim while allowed. */
static void *race_migrator(void *arg)
{
	struct race *r = arg;
	while (!atomic_load(&r->stop)) {
		if (!atomic_load(&r->victim_ok)) {
			atomic_store(&r->migrator_idle, true);
			sched_yield();
			continue;
		}
		struct uhmm_migrate_result res;
		int rc = uhmm_migrate(r->h, r->p, WORKERS * SLICE * PS(), r->victim, &res);
		if (rc || res.migrated + res.skipped != WORKERS * SLICE)
			atomic_fetch_add(&r->errors, 1);
	}
	return NULL;
}

static void race_run(void **state, bool destroy)
{
	struct uhmm *h = t_open(state);
	struct race r;
	memset(&r, 0, sizeof(r));
	r.h = h;
	r.other = t_dummy(h);
	r.p = t_alloc(h, WORKERS * SLICE);
	for (int i = 0; i < WORKERS; i++) {
		r.gen[i] = 7 + (unsigned)i;
		fill_pages(r.p + (size_t)i * SLICE * PS(), 0, SLICE, r.gen[i]);
	}
	struct tdev *t = NULL;
	if (destroy)
		r.victim = t_dummy(h);
	else {
		t = tdev_create(h, true, 4 * WORKERS * SLICE);
		r.victim = t->dev;
	}
	assert_migrate(h, r.p, WORKERS * SLICE * PS(), r.victim, WORKERS * SLICE, 0);
	atomic_store(&r.victim_ok, true);

	pthread_t th[WORKERS + 1];
	struct rarg args[WORKERS];
	for (int i = 0; i < WORKERS; i++) {
		args[i] = (struct rarg){ &r, i };
		assert_int_equal(pthread_create(&th[i], NULL, race_worker, &args[i]), 0);
	}
	assert_int_equal(pthread_create(&th[WORKERS], NULL, race_migrator, &r), 0);
	while (atomic_load(&r.rounds) < 50)
		usleep(1000);

	if (destroy) {
		/* The migrator must stop naming the device before it is freed;
		 * the workers keep faulting pages home from it meanwhile. */
		atomic_store(&r.victim_ok, false);
		while (!atomic_load(&r.migrator_idle))
			usleep(100);
		assert_int_equal(uhmm_device_destroy(r.victim), 0);
	} else {
		/* Hot-remove the block while the migrator keeps targeting it:
		 * it evacuates, later migrations to the device skip. */
		assert_int_equal(uhmm_devmem_remove(t->m), 0);
		t->m = NULL;
	}
	unsigned long at = atomic_load(&r.rounds);
	while (atomic_load(&r.rounds) < at + 50)
		usleep(1000);
	atomic_store(&r.stop, true);
	for (int i = 0; i <= WORKERS; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(atomic_load(&r.errors), 0);
	for (int i = 0; i < WORKERS; i++)
		assert_pages(r.p + (size_t)i * SLICE * PS(), 0, SLICE, r.gen[i]);
	t_close(h);
	if (t) {
		assert_int_equal(atomic_load(&t->bad), 0);
		tdev_free(t);
	}
}

static void inject_devmem_remove_racing(void **state)
{
	race_run(state, false);
}

static void inject_device_destroy_racing(void **state)
{
	race_run(state, true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(inject_fail_alloc),
		TEST_BOTH(inject_fail_copy_to),
		TEST_BOTH(inject_fail_copy_from),
		TEST_BOTH(inject_lost),
		TEST_BOTH(inject_flaky_copy_device),
		TEST_BOTH(inject_devmem_remove_racing),
		TEST_BOTH(inject_device_destroy_racing),
	};
	return cmocka_run_group_tests_name("inject", tests, NULL, NULL);
}
