/* SPDX-License-Identifier: MIT */
/*
 * Lifetimes of device memory: a block and its device are freed only once
 * nothing uses them.  Each test forces one interleaving with a delay point
 * (UHMM_DEBUG_DELAY, src/delay.c) instead of waiting for luck:
 *  - a CPU fault releasing a device page (its descriptor's last reference
 *    gone, the release still running) while uhmm_device_destroy runs;
 *  - an allocation for a migration that has claimed pages of a block but
 *    not yet returned while uhmm_devmem_remove runs;
 * What must hold: teardown waits for them, page_free is never called after
 * the device's destroy callback, no data is lost (every page ends in
 * system memory with its contents), and the calls report success.
 */
#include <pthread.h>

#include "testdev.h"

#define N 16
#define HOLD_US 100000   /* the delay point holds a thread this long */
#define LEAD_US 20000    /* the racing call starts this long into it */

/* Hold every thread that reaches the named point for HOLD_US. */
static void set_delay(const char *point)
{
	char spec[64];
	snprintf(spec, sizeof(spec), "%s:%d", point, HOLD_US);
	assert_int_equal(setenv("UHMM_DEBUG_DELAY", spec, 1), 0);
}

static void clear_delay(void)
{
	unsetenv("UHMM_DEBUG_DELAY");
}

struct reader {
	void *p;
	size_t first, n;
	unsigned seed;
	long bad;        /* first mismatching page, or -1 */
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;
	r->bad = check_pages(r->p, r->first, r->n, r->seed);
	return NULL;
}

struct migrator {
	struct uhmm *h;
	void *p;
	size_t n;
	struct uhmm_device *to;
	int rc;
	struct uhmm_migrate_result res;
};

static void *migrator_main(void *arg)
{
	struct migrator *m = arg;
	m->rc = uhmm_migrate(m->h, m->p, m->n * PS(), m->to, &m->res);
	return NULL;
}

/* Page 0 comes home (by a CPU fault, or by uhmm_migrate to system memory)
 * and its release is held; the device is destroyed meanwhile (it must wait
 * for the release to finish). */
static void destroy_waits_for_release(void **state, bool host_backed, bool by_fault)
{
	set_delay("release");
	struct uhmm *h = t_open_nofa(state);
	clear_delay();
	struct tdev *t = tdev_create(h, host_backed, 64);
	void *p = t_alloc(h, N);
	fill_pages(p, 0, N, 31);
	/* Only page 0 is on the device: nothing else holds teardown up (each
	 * release is held, the evacuation's too). */
	assert_migrate(h, p, PS(), t->dev, 1, 0);
	assert_states(h, p, 0, 1, UHMM_STATE_DEVICE, t->dev);

	struct reader r = { p, 0, 1, 31, -1 };
	struct migrator m = { h, p, 1, NULL, 0, { 0, 0 } };
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, by_fault ? reader_main : migrator_main,
	                                by_fault ? (void *)&r : (void *)&m), 0);
	usleep(LEAD_US);
	assert_int_equal(uhmm_device_destroy(t->dev), 0);
	assert_int_equal(pthread_join(th, NULL), 0);

	assert_int_equal(r.bad, -1);
	assert_int_equal(m.rc, 0);
	assert_int_equal(atomic_load(&t->ndestroy), 1);
	assert_freed_once(t, 1); /* bad == 0: no page_free after destroy */
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, N, 31);
	t_close(h);
	tdev_free(t);
}

static void lifetime_destroy_during_fault_host(void **state)
{
	destroy_waits_for_release(state, true, true);
}

static void lifetime_destroy_during_fault_copy(void **state)
{
	destroy_waits_for_release(state, false, true);
}

static void lifetime_destroy_during_home_host(void **state)
{
	destroy_waits_for_release(state, true, false);
}

static void lifetime_destroy_during_home_copy(void **state)
{
	destroy_waits_for_release(state, false, false);
}

/* A migration holds pages it claimed from the block but has not counted
 * yet; the block is removed meanwhile.  Removal must see those pages and
 * bring them home once the migration put data in them. */
static void remove_waits_for_alloc(void **state, bool host_backed)
{
	set_delay("alloc");
	struct uhmm *h = t_open(state);
	clear_delay();
	struct tdev *t = tdev_create(h, host_backed, 64);
	void *p = t_alloc(h, N);
	fill_pages(p, 0, N, 41);

	struct migrator m = { h, p, N, t->dev, -1, { 0, 0 } };
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, migrator_main, &m), 0);
	usleep(LEAD_US);
	assert_int_equal(uhmm_devmem_remove(t->m), 0);
	t->m = NULL;
	assert_int_equal(pthread_join(th, NULL), 0);

	assert_int_equal(m.rc, 0);
	assert_int_equal(m.res.migrated + m.res.skipped, N);
	/* Whatever reached the block came home before it was freed. */
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, N, 41);
	assert_int_equal(atomic_load(&t->nfree), m.res.migrated);
	assert_int_equal(atomic_load(&t->bad), 0);
	/* No memory left on the device: a new migration skips every page. */
	assert_migrate(h, p, N * PS(), t->dev, 0, N);
	assert_pages(p, 0, N, 41);
	t_close(h);
	tdev_free(t);
}

static void lifetime_remove_during_alloc_host(void **state)
{
	remove_waits_for_alloc(state, true);
}

static void lifetime_remove_during_alloc_copy(void **state)
{
	remove_waits_for_alloc(state, false);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(lifetime_destroy_during_fault_host),
		TEST_BOTH(lifetime_destroy_during_fault_copy),
		TEST_ONE(lifetime_destroy_during_home_host),
		TEST_ONE(lifetime_destroy_during_home_copy),
		TEST_ONE(lifetime_remove_during_alloc_host),
		TEST_ONE(lifetime_remove_during_alloc_copy),
	};
	return cmocka_run_group_tests_name("lifetime", tests, NULL, NULL);
}
