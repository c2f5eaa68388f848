/* SPDX-License-Identifier: MIT */
/*
 * The move-staging area (src/stage.c): a migration to a copy device has
 * taken the pages out of the page table and is about to copy them, out of
 * the identity gate, when the application changes the mapping (forced with
 * the library's test hook at DEBUG_STAGE_BEFORE_COPY).  With the copy
 * failing (UHMM_DUMMY_FAIL_COPY_LATE) the pages must go where the change
 * says: back, to where an mremap moved them, or nowhere (discarded,
 * unmapped, replaced); with the copy succeeding, the data is on the device
 * and follows the mapping.  RELIABILITY.md, finding 29.
 */
#include <pthread.h>
#include <semaphore.h>

#include "common.h"
#include "../../src/internal.h"

#define N 4

struct scene {
	struct uhmm *h;
	struct uhmm_device *c; /* the copy device */
	char *x;               /* the region's first address */
	sem_t at, go;          /* hook → main thread, and back */
	_Atomic int stopped;   /* the hook waited (once) */
};
static struct scene *S;

static void hook(int point, uintptr_t addr, size_t len)
{
	(void)len;
	struct scene *s = S;
	if (!s || point != DEBUG_STAGE_BEFORE_COPY || addr != (uintptr_t)s->x ||
	    atomic_exchange(&s->stopped, 1))
		return;
	sem_post(&s->at);
	while (sem_wait(&s->go))
		;
}

static void *migrate_thread(void *arg)
{
	struct scene *s = arg;
	struct uhmm_migrate_result r;
	intptr_t rc = uhmm_migrate(s->h, s->x, N * PS(), s->c, &r);
	return (void *)rc;
}

static bool have_move(void)
{
	struct uhmm_sysinfo si = UHMM_SYSINFO_INIT;
	return uhmm_sysinfo_get(&si) == 0 && (si.caps & UHMM_SYS_MOVE);
}

static void scene_open(void **state, struct scene *s, bool fail_copy)
{
	if (!have_move())
		skip();
	memset(s, 0, sizeof(*s));
	s->h = t_open(state);
	struct uhmm_dummy_options o = UHMM_DUMMY_OPTIONS_INIT;
	o.flags = UHMM_DUMMY_COPY_DEVICE;
	assert_int_equal(uhmm_dummy_create(s->h, &o, &s->c), 0);
	s->x = t_alloc(s->h, N);
	fill_pages(s->x, 0, N, 21);
	if (fail_copy)
		assert_int_equal(uhmm_dummy_set_fail(s->c, UHMM_DUMMY_FAIL_COPY_LATE), 0);
	sem_init(&s->at, 0, 0);
	sem_init(&s->go, 0, 0);
	S = s;
	atomic_store(&debug_hook, hook);
}

/* Start the migration; returns once its pages are in staging. */
static pthread_t scene_start(struct scene *s)
{
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, migrate_thread, s), 0);
	while (sem_wait(&s->at))
		;
	return t;
}

static intptr_t scene_finish(struct scene *s, pthread_t t)
{
	sem_post(&s->go);
	void *rc;
	assert_int_equal(pthread_join(t, &rc), 0);
	assert_int_equal(uhmm_dummy_set_fail(s->c, 0), 0);
	return (intptr_t)rc;
}

static void scene_close(struct scene *s)
{
	atomic_store(&debug_hook, NULL);
	S = NULL;
	sem_destroy(&s->at);
	sem_destroy(&s->go);
	struct uhmm_stats st = t_stats(s->h);
	assert_int_equal(st.pages_poisoned, 0);
	t_close(s->h);
}

static char *reserve(void)
{
	void *y = mmap(NULL, N * PS(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	assert_true(y != MAP_FAILED);
	return y;
}

static void move_region(char *from, char *to)
{
	void *np = mremap(from, N * PS(), N * PS(), MREMAP_MAYMOVE | MREMAP_FIXED, to);
	assert_ptr_equal(np, to);
}

/* The pages are out of the page table while in staging: a look from
 * outside (uhmm_query) still says SYSTEM, and a failed copy puts them
 * back where they were. */
static void stage_fail_back(void **state)
{
	struct scene s;
	scene_open(state, &s, true);
	pthread_t t = scene_start(&s);
	struct uhmm_page_info pi[N];
	assert_int_equal(uhmm_query(s.h, s.x, N, pi), 0);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(pi[i].state, UHMM_STATE_SYSTEM);
	assert_int_equal(scene_finish(&s, t), 0);
	assert_states(s.h, s.x, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_int_equal(t_stats(s.h).pages_staged, 0);
	assert_pages(s.x, 0, N, 21);
	assert_migrate(s.h, s.x, N * PS(), s.c, N, 0); /* and they still move */
	assert_pages(s.x, 0, N, 21);
	scene_close(&s);
}

/* mremap while staged, copy fails: the data goes to the new address. */
static void stage_fail_moved(void **state)
{
	struct scene s;
	scene_open(state, &s, true);
	char *y = reserve();
	pthread_t t = scene_start(&s);
	move_region(s.x, y);
	assert_int_equal(scene_finish(&s, t), 0);
	assert_states(s.h, y, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(y, 0, N, 21);
	assert_int_equal(munmap(y, N * PS()), 0);
	scene_close(&s);
}

/* madvise(MADV_DONTNEED) while staged, copy fails: the application
 * discarded the pages, so they read zeros, not the staged data. */
static void stage_fail_discarded(void **state)
{
	struct scene s;
	scene_open(state, &s, true);
	pthread_t t = scene_start(&s);
	assert_int_equal(madvise(s.x, N * PS(), MADV_DONTNEED), 0);
	assert_int_equal(scene_finish(&s, t), 0);
	assert_zero_pages(s.x, 0, N);
	scene_close(&s);
}

/* Discarded and then moved while staged, copy fails: zeros at the new
 * address (the discard travels with the move). */
static void stage_fail_discarded_moved(void **state)
{
	struct scene s;
	scene_open(state, &s, true);
	char *y = reserve();
	pthread_t t = scene_start(&s);
	assert_int_equal(madvise(s.x, N * PS(), MADV_DONTNEED), 0);
	move_region(s.x, y);
	assert_int_equal(scene_finish(&s, t), 0);
	assert_zero_pages(y, 0, N);
	assert_int_equal(munmap(y, N * PS()), 0);
	scene_close(&s);
}

/* Unmapped while staged and another managed region moved over the
 * addresses, copy fails: the addresses hold the other region's data (the
 * staged pages are not put over it). */
static void stage_fail_replaced(void **state)
{
	struct scene s;
	scene_open(state, &s, true);
	char *z = t_alloc(s.h, N);
	fill_pages(z, 0, N, 22);
	pthread_t t = scene_start(&s);
	move_region(z, s.x); /* MREMAP_FIXED unmaps x first */
	assert_int_equal(scene_finish(&s, t), 0);
	assert_pages(s.x, 0, N, 22);
	assert_states(s.h, s.x, 0, N, UHMM_STATE_SYSTEM, NULL);
	scene_close(&s);
}

/* mremap while staged, copy succeeds: the device holds the data, which
 * follows the mapping to its new address. */
static void stage_ok_moved(void **state)
{
	struct scene s;
	scene_open(state, &s, false);
	char *y = reserve();
	pthread_t t = scene_start(&s);
	move_region(s.x, y);
	assert_int_equal(scene_finish(&s, t), 0);
	assert_states(s.h, y, 0, N, UHMM_STATE_DEVICE, s.c);
	assert_pages(y, 0, N, 21);
	assert_int_equal(munmap(y, N * PS()), 0);
	scene_close(&s);
}

struct writer {
	char *p;
	atomic_int done;
};

static void *write_thread(void *arg)
{
	struct writer *w = arg;
	fill_pages(w->p, 0, N, 23); /* faults: the pages are in flight */
	atomic_store(&w->done, 1);
	return NULL;
}

/* A CPU write while staged waits for the migration, then lands: never
 * lost, never overwritten by the staged data. */
static void stage_cpu_write(void **state)
{
	struct scene s;
	scene_open(state, &s, false);
	pthread_t t = scene_start(&s);
	struct writer w = { .p = s.x };
	pthread_t wt;
	assert_int_equal(pthread_create(&wt, NULL, write_thread, &w), 0);
	usleep(20000);
	assert_int_equal(atomic_load(&w.done), 0); /* waiting on the page lock */
	assert_int_equal(scene_finish(&s, t), 0);
	assert_int_equal(pthread_join(wt, NULL), 0);
	assert_pages(s.x, 0, N, 23);
	scene_close(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(stage_fail_back),
		TEST_BOTH(stage_fail_moved),
		TEST_BOTH(stage_fail_discarded),
		TEST_BOTH(stage_fail_discarded_moved),
		TEST_BOTH(stage_fail_replaced),
		TEST_BOTH(stage_ok_moved),
		TEST_BOTH(stage_cpu_write),
	};
	return cmocka_run_group_tests_name("stage", tests, NULL, NULL);
}
