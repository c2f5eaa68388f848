/* SPDX-License-Identifier: MIT */
/*
 * Coherent device memory (DEVICE | ALLOW_MIGRATION): migrated granules are
 * read and written by the CPU in place, with no fault, and come back only
 * when asked (or when the memory is removed, the device destroyed, the
 * process forks).  Covers: repeated round trips, snapshots from two
 * devices, read-only memory, fork, munmap and madvise of coherent
 * granules, and hot-unplug while other threads read the pages.
 */
#include "types.h"

/*
 * migrate_multiple: 10 rounds of migrate → the CPU modifies every page in
 * place (no fault) → explicit migration back → data right.
 */
static void coherent_migrate_multiple(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_coherent(h);
	const size_t n = 2 * GP();
	void *p = t_alloc(h, n);
	void *buf = malloc(4 * PS());
	assert_non_null(buf);

	fill_pages(p, 0, n, 0);
	for (unsigned r = 0; r < 10; r++) {
		assert_migrate(h, p, n * PS(), d, n, 0);
		assert_states(h, p, 0, n, UHMM_STATE_DEVICE_COHERENT, d);
		struct uhmm_stats s0 = t_stats(h);
		assert_pages(p, 0, n, r);
		fill_pages(p, 0, n, r + 1);
		assert_pages(p, 0, n, r + 1);
		/* The device sees the CPU's writes in its own memory. */
		assert_int_equal(uhmm_dummy_read(d, page_at(p, r * 37 % (n - 4)), buf, 4, NULL), 0);
		assert_buf(buf, r * 37 % (n - 4), 4, r + 1);
		struct uhmm_stats s1 = t_stats(h);
		assert_int_equal(s1.cpu_faults, s0.cpu_faults);
		assert_int_equal(s1.pages_to_system, s0.pages_to_system);
		assert_states(h, p, 0, n, UHMM_STATE_DEVICE_COHERENT, d);

		assert_migrate(h, p, n * PS(), NULL, n, 0);
		assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
		assert_int_equal(t_stats(h).pages_to_system, s0.pages_to_system + n);
		assert_pages(p, 0, n, r + 1);
		assert_int_equal(t_stats(h).cpu_faults, s0.cpu_faults);
		assert_int_equal(uhmm_devmem_used(uhmm_dummy_devmem(d)), 0);
	}
	free(buf);
	t_close(h);
}

/* Snapshot of coherent pages from two devices (and a private one). */
static void coherent_snapshot_two_devices(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *a = t_coherent(h), *b = t_coherent(h), *c = t_dummy(h);
	const size_t g = GP(), n = 3 * g;
	void *p = t_alloc(h, n);
	uint8_t *snap = malloc(n);
	assert_non_null(snap);

	fill_pages(p, 0, n, 5);
	assert_migrate(h, p, g * PS(), a, g, 0);
	assert_migrate(h, page_at(p, g), g * PS(), b, g, 0);
	/* No stealing: a granule on a is skipped by b. */
	assert_migrate(h, p, g * PS(), b, 0, g);

	struct {
		struct uhmm_device *dev;
		uint8_t want[3];
	} rows[] = {
		{ a, { UHMM_SNAP_DEV_COHERENT_LOCAL | UHMM_SNAP_WRITE,
		       UHMM_SNAP_DEV_COHERENT_REMOTE | UHMM_SNAP_WRITE, UHMM_SNAP_WRITE } },
		{ b, { UHMM_SNAP_DEV_COHERENT_REMOTE | UHMM_SNAP_WRITE,
		       UHMM_SNAP_DEV_COHERENT_LOCAL | UHMM_SNAP_WRITE, UHMM_SNAP_WRITE } },
		{ c, { UHMM_SNAP_DEV_COHERENT_REMOTE | UHMM_SNAP_WRITE,
		       UHMM_SNAP_DEV_COHERENT_REMOTE | UHMM_SNAP_WRITE, UHMM_SNAP_WRITE } },
	};
	uint64_t f0 = t_stats(h).cpu_faults;
	for (size_t k = 0; k < 3; k++) {
		memset(snap, 0xEE, n);
		assert_int_equal(uhmm_dummy_snapshot(rows[k].dev, p, n, snap), 0);
		for (size_t i = 0; i < n; i++) {
			if (snap[i] != rows[k].want[i / g])
				print_error("device %zu page %zu: snapshot %#x expected %#x\n", k, i,
				            snap[i], rows[k].want[i / g]);
			assert_int_equal(snap[i], rows[k].want[i / g]);
		}
	}
	/* A snapshot moves nothing. */
	assert_states(h, p, 0, g, UHMM_STATE_DEVICE_COHERENT, a);
	assert_states(h, p, g, g, UHMM_STATE_DEVICE_COHERENT, b);
	assert_states(h, p, 2 * g, g, UHMM_STATE_SYSTEM, NULL);

	/* Device c reads across the boundary of both granules. */
	void *buf = malloc(2 * PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_read(c, page_at(p, g - 1), buf, 2, NULL), 0);
	assert_buf(buf, g - 1, 2, 5);
	free(buf);
	assert_pages(p, 0, n, 5);
	assert_int_equal(t_stats(h).cpu_faults, f0);

	/* Never-populated pages of a coherent granule read as zero in place. */
	void *z = t_alloc(h, g);
	fill_pages(z, 0, 1, 6);
	assert_migrate(h, z, g * PS(), a, g, 0);
	assert_pages(z, 0, 1, 6);
	assert_zero_pages(z, 1, g - 1);

	free(snap);
	t_close(h);
}

/* uhmm_mprotect(PROT_READ) before migration: read-only in place. */
static void coherent_mprotect_readonly(void **state)
{
	struct sigaction saved;
	t_catch(SIGSEGV, &saved);
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_coherent(h);
	const size_t g = GP();
	void *p = t_alloc(h, g);
	uint8_t snap[4];

	fill_pages(p, 0, g, 7);
	assert_int_equal(uhmm_mprotect(h, p, g * PS(), PROT_READ), 0);
	assert_migrate(h, p, g * PS(), d, g, 0);
	assert_states(h, p, 0, g, UHMM_STATE_DEVICE_COHERENT, d);
	uint64_t f0 = t_stats(h).cpu_faults;
	assert_pages(p, 0, g, 7);
	t_nsig = 0;
	assert_true(t_write_faults(page_at(p, 3), 1));
	assert_true(t_write_faults(page_at(p, g - 1), 1));
	assert_int_equal(t_nsig, 2);
	assert_pages(p, 0, g, 7);
	assert_int_equal(t_stats(h).cpu_faults, f0);
	assert_int_equal(uhmm_dummy_snapshot(d, p, 4, snap), 0);
	for (int i = 0; i < 4; i++)
		assert_int_equal(snap[i], UHMM_SNAP_DEV_COHERENT_LOCAL | UHMM_SNAP_READ);
	/* The device may not write it either. */
	void *buf = calloc(1, PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_write(d, p, buf, 1, NULL), -EPERM);
	free(buf);
	assert_pages(p, 0, g, 7);

	/* Back home it is still read-only; made writable, it is writable. */
	assert_migrate(h, p, g * PS(), NULL, g, 0);
	assert_states(h, p, 0, g, UHMM_STATE_SYSTEM, NULL);
	assert_true(t_write_faults(page_at(p, 5), 1));
	assert_pages(p, 0, g, 7);
	assert_int_equal(uhmm_mprotect(h, p, g * PS(), PROT_READ | PROT_WRITE), 0);
	assert_migrate(h, p, g * PS(), d, g, 0);
	assert_false(t_write_faults(page_at(p, 5), 1));
	assert_int_equal(touch_read(p, 5), 1);
	assert_migrate(h, p, g * PS(), NULL, g, 0);
	assert_int_equal(touch_read(p, 5), 1);
	assert_int_equal(t_nsig, 3);
	t_close(h);
	assert_int_equal(sigaction(SIGSEGV, &saved, NULL), 0);
}

/* fork with coherent pages: the child sees the data, both copies private. */
static void coherent_fork(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_coherent(h);
	const size_t n = 2 * GP();
	void *p = t_alloc(h, n);

	fill_pages(p, 0, n, 8);
	assert_migrate(h, p, n * PS(), d, n, 0);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(30);
		if (check_pages(p, 0, n, 8) != -1)
			_exit(10);
		fill_pages(p, 0, n, 9);
		if (check_pages(p, 0, n, 9) != -1)
			_exit(11);
		_exit(0);
	}
	assert_int_equal(t_wait_child(pid), 0);
	assert_pages(p, 0, n, 8);
	/* Still usable: migrate again, modify in place, bring back. */
	assert_migrate(h, p, n * PS(), d, n, 0);
	fill_pages(p, 0, n, 10);
	assert_migrate(h, p, n * PS(), NULL, n, 0);
	assert_pages(p, 0, n, 10);

	/* The child writes while the parent's pages are coherent again. */
	assert_migrate(h, p, n * PS(), d, n, 0);
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(30);
		fill_pages(p, 0, n, 11);
		_exit(check_pages(p, 0, n, 11) == -1 ? 0 : 12);
	}
	assert_int_equal(t_wait_child(pid), 0);
	assert_pages(p, 0, n, 10);
	t_close(h);
}

/* munmap of a coherent granule frees its device pages. */
static void coherent_munmap_frees(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_coherent(h);
	struct uhmm_devmem *m = uhmm_dummy_devmem(d);
	const size_t g = GP(), n = 3 * g;
	void *p = t_alloc(h, n);

	fill_pages(p, 0, n, 12);
	assert_migrate(h, p, n * PS(), d, n, 0);
	assert_int_equal(uhmm_devmem_used(m), n);
	/* The middle granule. */
	assert_int_equal(munmap(page_at(p, g), g * PS()), 0);
	assert_int_equal(t_wait_used(m, 2 * g), 2 * g);
	assert_states(h, p, 0, g, UHMM_STATE_DEVICE_COHERENT, d);
	assert_states(h, p, 2 * g, g, UHMM_STATE_DEVICE_COHERENT, d);
	assert_pages(p, 0, g, 12);
	assert_pages(p, 2 * g, g, 12);
	/* Part of a granule: the granule's pages outside the hole stay. */
	assert_int_equal(munmap(page_at(p, 2 * g + 8), 8 * PS()), 0);
	assert_int_equal(t_wait_used(m, 2 * g - 8), 2 * g - 8);
	assert_pages(p, 2 * g, 8, 12);
	assert_pages(p, 2 * g + 16, g - 16, 12);
	/* uhmm_free of the first granule. */
	assert_int_equal(uhmm_free(h, p, g * PS()), 0);
	assert_int_equal(t_wait_used(m, g - 8), g - 8);
	assert_int_equal(uhmm_free(h, page_at(p, 2 * g), 8 * PS()), 0);
	assert_int_equal(uhmm_free(h, page_at(p, 2 * g + 16), (g - 16) * PS()), 0);
	assert_int_equal(t_wait_used(m, 0), 0);
	t_close(h);
}

/*
 * madvise(MADV_DONTNEED) on coherent pages (a shared mapping of device
 * memory) keeps their data: zeroing them asynchronously could wipe a write
 * made right after madvise returns (see README, coherent memory).
 */
static void coherent_madvise_dontneed(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_coherent(h);
	const size_t g = GP();
	void *p = t_alloc(h, g);

	for (unsigned r = 0; r < 20; r++) {
		fill_pages(p, 0, g, 13 + r);
		assert_migrate(h, p, g * PS(), d, g, 0);
		size_t off = 4 + r * 11 % (g - 20);
		assert_int_equal(madvise(page_at(p, off), 8 * PS(), MADV_DONTNEED), 0);
		assert_pages(p, off, 8, 13 + r);
		assert_pages(p, 0, off, 13 + r);
		assert_pages(p, off + 8, g - off - 8, 13 + r);
		/* Writable again in place, and the data comes home. */
		fill_pages(p, off, 1, 99);
		assert_migrate(h, p, g * PS(), NULL, g, 0);
		assert_pages(p, off, 1, 99);
		assert_pages(p, off + 1, 7, 13 + r);
		assert_pages(p, off + 8, g - off - 8, 13 + r);
	}
	t_close(h);
}

/* ---- hot-unplug while other threads read ---- */

#define READERS 3

struct readers {
	void *p;
	size_t n;
	unsigned seed;
	atomic_int stop;
	atomic_ulong bad, rounds;
	pthread_t th[READERS];
};

static void *reader_main(void *arg)
{
	struct readers *r = arg;
	size_t wpp = words_per_page();
	while (!atomic_load(&r->stop)) {
		for (size_t i = 0; i < r->n; i++) {
			const volatile uint64_t *w = (const volatile uint64_t *)page_at(r->p, i);
			/* Three words per page: first, middle, last. */
			if (w[0] != pat(r->seed, i, 0) || w[wpp / 2] != pat(r->seed, i, wpp / 2) ||
			    w[wpp - 1] != pat(r->seed, i, wpp - 1))
				atomic_fetch_add(&r->bad, 1);
		}
		atomic_fetch_add(&r->rounds, 1);
	}
	return NULL;
}

static void readers_start(struct readers *r, void *p, size_t n, unsigned seed)
{
	r->p = p;
	r->n = n;
	r->seed = seed;
	atomic_store(&r->stop, 0);
	atomic_store(&r->bad, 0);
	atomic_store(&r->rounds, 0);
	for (int i = 0; i < READERS; i++)
		assert_int_equal(pthread_create(&r->th[i], NULL, reader_main, r), 0);
	/* Let them get going. */
	while (atomic_load(&r->rounds) < READERS)
		sched_yield();
}

static void readers_stop(struct readers *r)
{
	unsigned long before = atomic_load(&r->rounds);
	while (atomic_load(&r->rounds) < before + READERS) /* a full pass after the change */
		sched_yield();
	atomic_store(&r->stop, 1);
	for (int i = 0; i < READERS; i++)
		assert_int_equal(pthread_join(r->th[i], NULL), 0);
	assert_int_equal(atomic_load(&r->bad), 0);
}

/*
 * uhmm_devmem_remove of a custom device's coherent block, then
 * uhmm_device_destroy, and the same on the dummy device, each while
 * READERS threads read every page: pages come home, data always right.
 */
static void coherent_hotunplug(void **state)
{
	struct uhmm *h = t_open(state);
	const size_t g = GP(), n = 4 * g;
	void *p = t_alloc(h, n);
	struct readers rd;
	unsigned seed = 40;

	fill_pages(p, 0, n, seed);
	for (unsigned r = 0; r < 6; r++) {
		struct uhmm_device *d = (r % 2) ? t_coherent(h) : t_hostdev(h);
		struct uhmm_devmem *m = NULL;
		if (r % 2 == 0)
			assert_int_equal(uhmm_devmem_add(d, n * PS(), CLS_COHERENT, &m), 0);
		else
			m = uhmm_dummy_devmem(d);
		assert_migrate(h, p, n * PS(), d, n, 0);
		assert_int_equal(uhmm_devmem_used(m), n);
		/* Change the data in place before the readers start. */
		fill_pages(p, 0, n, ++seed);
		readers_start(&rd, p, n, seed);
		if (r % 3 == 2) {
			assert_int_equal(uhmm_device_destroy(d), 0);
		} else {
			assert_int_equal(uhmm_devmem_remove(m), 0);
		}
		assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
		readers_stop(&rd);
		assert_pages(p, 0, n, seed);
		if (r % 3 != 2)
			assert_int_equal(uhmm_device_destroy(d), 0);
	}
	/* uhmm_close with coherent pages: they come home too. */
	struct uhmm_device *d = t_coherent(h);
	assert_migrate(h, p, n * PS(), d, n, 0);
	fill_pages(p, 0, n, ++seed);
	readers_start(&rd, p, n, seed);
	assert_int_equal(uhmm_dummy_release(d), 0);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	readers_stop(&rd);
	assert_migrate(h, p, n * PS(), d, n, 0);
	t_close(h);
	assert_pages(p, 0, n, seed);
	assert_int_equal(munmap(p, n * PS()), 0);
}

/* Device loss: the memory file is truncated, in-place accesses raise SIGBUS. */
static void coherent_lost(void **state)
{
	struct sigaction saved;
	t_catch(SIGBUS, &saved);
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_coherent(h);
	const size_t g = GP();
	void *p = t_alloc(h, 2 * g);

	fill_pages(p, 0, 2 * g, 50);
	assert_migrate(h, p, g * PS(), d, g, 0);
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_LOST), 0);
	assert_states(h, p, 0, g, UHMM_STATE_POISONED, NULL);
	t_nsig = 0;
	assert_true(t_read_faults(page_at(p, 2)));
	assert_true(t_write_faults(page_at(p, g - 1), 1));
	assert_int_equal(t_nsig, 2);
	assert_pages(p, g, g, 50);
	/* Migrations skip the lost granule, and the device takes no more. */
	assert_migrate(h, p, 2 * g * PS(), d, 0, 2 * g);
	assert_migrate(h, p, 2 * g * PS(), NULL, g, g);
	assert_int_equal(uhmm_free(h, p, 2 * g * PS()), 0);
	assert_int_equal(uhmm_device_destroy(d), 0);
	t_close(h);
	assert_int_equal(sigaction(SIGBUS, &saved, NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(coherent_migrate_multiple),
		TEST_ONE(coherent_snapshot_two_devices),
		TEST_BOTH(coherent_mprotect_readonly),
		TEST_BOTH(coherent_fork),
		TEST_BOTH(coherent_munmap_frees),
		TEST_BOTH(coherent_madvise_dontneed),
		TEST_BOTH(coherent_hotunplug),
		TEST_BOTH(coherent_lost),
	};
	return cmocka_run_group_tests_name("types_coherent", tests, NULL, NULL);
}
