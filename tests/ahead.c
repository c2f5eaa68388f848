/* SPDX-License-Identifier: MIT */
/*
 * Fault-ahead (uhmm_options.fault_ahead): worker threads bring the
 * granules ahead of a sequential CPU reader home; data stays exact; an
 * explicit migration to a device is never undone by a request queued
 * before it; off by default.
 */
#include <time.h>
#include <unistd.h>

#include "testdev.h"

#define GRAN_PAGES 512 /* 2 MiB: a full stream granule */

static struct uhmm *open_ahead(void **state, unsigned granules)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.fault_ahead = granules;
	return t_open_opts(state, &o);
}

/* n pages of managed memory holding pattern `seed`, all on device d. */
static void *on_device(struct uhmm *h, struct uhmm_device *d, size_t n, unsigned seed)
{
	void *p = t_alloc(h, n);
	fill_pages(p, 0, n, seed);
	assert_migrate(h, p, n * PS(), d, n, 0);
	return p;
}

/* Read one word of every page of [first, first + n), in order. */
static void stream_read(void *p, size_t first, size_t n)
{
	for (size_t i = first; i < first + n; i++)
		(void)touch_read(p, i);
}

/* Wait (at most ~10 s) until fault-ahead brought at least `want` pages home. */
static uint64_t wait_ahead(struct uhmm *h, uint64_t want)
{
	uint64_t got = 0;
	for (int i = 0; i < 1000; i++) {
		got = t_stats(h).pages_ahead;
		if (got >= want)
			break;
		usleep(10000);
	}
	return got;
}

/* Pages of [first, first + n) in system memory, waiting (~10 s at most)
 * for at least `want` (windows in flight report their old state). */
static size_t wait_count(struct uhmm *h, void *p, size_t first, size_t n, size_t want)
{
	size_t c = 0;
	for (int i = 0; i < 1000; i++) {
		c = count_state(h, p, first, n, UHMM_STATE_SYSTEM);
		if (c >= want)
			break;
		usleep(10000);
	}
	return c;
}

/* A stream through device memory: the granules ahead of it come home in
 * the background, and every byte is what was written. */
static void ahead_stream_dummy(void **state)
{
	struct uhmm *h = open_ahead(state, 2);
	const size_t n = 8 * GRAN_PAGES;
	void *p = on_device(h, t_dummy(h), n, 7);

	/* Reading the first 2 MiB grows the fault granule to 2 MiB; the
	 * first full granule queues the next 2, one request each. */
	stream_read(p, 0, GRAN_PAGES + 1);
	uint64_t got = wait_ahead(h, 2 * GRAN_PAGES);
	assert_true(got >= 2 * GRAN_PAGES);
	/* Those pages came home without a fault of their own. */
	const size_t rest = n - GRAN_PAGES - 1;
	size_t home = wait_count(h, p, GRAN_PAGES + 1, rest, 2 * GRAN_PAGES);
	assert_true(home >= 2 * GRAN_PAGES);
	uint64_t faults = t_stats(h).cpu_faults;
	stream_read(p, GRAN_PAGES + 1, rest);
	assert_true(t_stats(h).cpu_faults - faults <= rest - home);
	assert_pages(p, 0, n, 7);
	assert_int_equal(wait_count(h, p, 0, n, n), n);
	t_close(h);
}

/* The same through a copy device (copy_from_device + UFFDIO_COPY). */
static void ahead_stream_copydev(void **state)
{
	struct uhmm *h = open_ahead(state, 4);
	const size_t n = 6 * GRAN_PAGES;
	struct tdev *t = tdev_create(h, false, n);
	void *p = on_device(h, t->dev, n, 8);
	stream_read(p, 0, n);
	assert_pages(p, 0, n, 8);
	assert_int_equal(wait_count(h, p, 0, n, n), n);
	assert_int_equal(atomic_load(&t->bad), 0);
	t_close(h);
	tdev_free(t);
}

/* A migration to a device that starts after requests were queued wins:
 * once it returns, every page it moved stays on the device. */
static void ahead_cancelled_by_migrate(void **state)
{
	struct uhmm *h = open_ahead(state, 16);
	struct uhmm_device *d = t_dummy(h);
	const size_t n = 24 * GRAN_PAGES;
	void *p = on_device(h, d, n, 9);
	for (int round = 0; round < 5; round++) {
		if (round)
			assert_migrate(h, p, n * PS(), d, n, 0);
		stream_read(p, 0, GRAN_PAGES + 1); /* queues up to 16 granules */
		assert_migrate(h, p, n * PS(), d, n, 0);
		/* Give queued requests every chance to run: none may act. */
		usleep(50000);
		assert_int_equal(count_state(h, p, 0, n, UHMM_STATE_DEVICE), n);
	}
	assert_pages(p, 0, n, 9);
	t_close(h);
}

/* Off by default (no env): a stream brings home only what it faults on. */
static void ahead_off_by_default(void **state)
{
	if (getenv("UHMM_FAULT_AHEAD"))
		skip();
	struct uhmm *h = t_open(state);
	const size_t n = 4 * GRAN_PAGES;
	void *p = on_device(h, t_dummy(h), n, 10);
	stream_read(p, 0, GRAN_PAGES + 1);
	usleep(50000);
	assert_int_equal(t_stats(h).pages_ahead, 0);
	assert_true(count_state(h, p, 2 * GRAN_PAGES, 2 * GRAN_PAGES, UHMM_STATE_DEVICE) > 0);
	assert_pages(p, 0, n, 10);
	t_close(h);
}

/* Closing a context while its workers run loses nothing and leaks nothing. */
static void ahead_close_while_busy(void **state)
{
	struct uhmm *h = open_ahead(state, 16);
	const size_t n = 32 * GRAN_PAGES;
	void *p = on_device(h, t_dummy(h), n, 11);
	stream_read(p, 0, GRAN_PAGES + 1);
	t_close(h); /* workers stopped first, then every page comes home */
	assert_pages(p, 0, n, 11);
	munmap(p, n * PS());
}

/* Out-of-range option values are taken as the bound, not refused. */
static void ahead_option_bounds(void **state)
{
	struct uhmm *h = open_ahead(state, 1000); /* = 16 granules, 4 workers */
	const size_t n = 20 * GRAN_PAGES;
	void *p = on_device(h, t_dummy(h), n, 12);
	stream_read(p, 0, n);
	assert_pages(p, 0, n, 12);
	assert_int_equal(wait_count(h, p, 0, n, n), n);
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(ahead_stream_dummy),
		TEST_BOTH(ahead_stream_copydev),
		TEST_BOTH(ahead_cancelled_by_migrate),
		TEST_BOTH(ahead_off_by_default),
		TEST_BOTH(ahead_close_while_busy),
		TEST_ONE(ahead_option_bounds),
	};
	return cmocka_run_group_tests_name("ahead", tests, NULL, NULL);
}
