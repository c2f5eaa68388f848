/* SPDX-License-Identifier: MIT */
/*
 * mremap while a copy-fallback migration is out of the identity gate for
 * its discard, made deterministic with the library's test hook: the region
 * is moved away and back over its first address (as uhmm-stress did when
 * it found these), before or after the discard.  The migration must then
 * decide from where the page ended up, and uhmm_query must report the page
 * the pending moves bring (RELIABILITY.md, finding 26).
 */
#include <pthread.h>
#include <semaphore.h>

#include "common.h"
#include "../../src/internal.h"

#define N 4

struct scene {
	struct uhmm *h;
	struct uhmm_device *a, *b;
	char *x;             /* the region's first address */
	int act_at;          /* the hook point the main thread acts at */
	sem_t at, go;        /* hook → main thread, and back */
	_Atomic int stopped; /* the hook waited (once) */
};
static struct scene *S;

static void hook(int point, uintptr_t addr, size_t len)
{
	(void)len;
	struct scene *s = S;
	if (!s || point != s->act_at || addr != (uintptr_t)s->x || atomic_exchange(&s->stopped, 1))
		return;
	sem_post(&s->at);
	while (sem_wait(&s->go))
		;
}

static void *migrate_thread(void *arg)
{
	struct scene *s = arg;
	struct uhmm_migrate_result r;
	intptr_t rc = uhmm_migrate(s->h, s->x, N * PS(), s->a, &r);
	return (void *)rc;
}

/* mremap the region from `from` to `to` (both page-aligned, N pages). */
static void move_region(char *from, char *to)
{
	void *np = mremap(from, N * PS(), N * PS(), MREMAP_MAYMOVE | MREMAP_FIXED, to);
	assert_ptr_equal(np, to);
}

static void scene_open(void **state, struct scene *s)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.flags = UHMM_OPT_NO_MOVE; /* every migration takes the copy fallback */
	memset(s, 0, sizeof(*s));
	s->h = t_open_opts(state, &o);
	s->a = t_dummy(s->h);
	s->b = t_dummy(s->h);
	s->x = t_alloc(s->h, N);
	fill_pages(s->x, 0, N, 7);
	sem_init(&s->at, 0, 0);
	sem_init(&s->go, 0, 0);
	S = s;
	atomic_store(&debug_hook, hook);
}

static void scene_close(struct scene *s)
{
	atomic_store(&debug_hook, NULL);
	S = NULL;
	sem_destroy(&s->at);
	sem_destroy(&s->go);
	t_close(s->h);
}

/* A reserved place to move the region to (as uhmm-stress does). */
static char *reserve(void)
{
	void *y = mmap(NULL, N * PS(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	assert_true(y != MAP_FAILED);
	return y;
}

/*
 * The region moves away before the discard (which then finds nothing at
 * its address) and back after it: the CPU pages live on, at the region's
 * first address again.  Before the fix the migration looked only at the
 * first move's destination (empty), took the device copy for the data and
 * called the pages DEVICE while the CPU pages were mapped: a device read
 * through B then failed (-EFAULT, the page could not be brought home over
 * a mapped one) and CPU writes went where the device never looked.  And
 * uhmm_query, while both moves waited for the migration, reported NONE
 * (the first move's destination entry, held for it).
 */
static void remap_back_after_discard(void **state)
{
	struct scene s;
	scene_open(state, &s);
	char *y = reserve();
	pthread_t t;

	s.act_at = DEBUG_FALLBACK_BEFORE_DISCARD;
	assert_int_equal(pthread_create(&t, NULL, migrate_thread, &s), 0);
	while (sem_wait(&s.at))
		;
	move_region(s.x, y);
	/* Its discard runs now, on nothing; back once it is done. */
	atomic_store(&s.stopped, 0);
	s.act_at = DEBUG_FALLBACK_AFTER_DISCARD;
	sem_post(&s.go);
	while (sem_wait(&s.at))
		;
	move_region(y, s.x);
	struct uhmm_page_info pi[N];
	int qrc = uhmm_query(s.h, s.x, N, pi);
	/* Asserted once the migration is done (nothing left waiting). */
	sem_post(&s.go);
	void *rc;
	assert_int_equal(pthread_join(t, &rc), 0);
	assert_int_equal((intptr_t)rc, 0);
	assert_int_equal(qrc, 0);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(pi[i].state, UHMM_STATE_SYSTEM); /* on its way, from system memory */

	assert_states(s.h, s.x, 0, N, UHMM_STATE_SYSTEM, NULL);
	char *buf = malloc(N * PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_read(s.b, s.x, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 7);
	/* A CPU write is seen by the device (one copy of the page). */
	fill_pages(s.x, 0, N, 8);
	assert_int_equal(uhmm_dummy_read(s.a, s.x, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 8);
	/* And the pages still move. */
	assert_migrate(s.h, s.x, N * PS(), s.a, N, 0);
	assert_pages(s.x, 0, N, 8);
	free(buf);
	scene_close(&s);
}

/*
 * The discard takes the CPU pages (the device copy is the data); then the
 * region moves away, new memory with data is mapped at the first move's
 * destination, and the region moves back.  Before the fix the migration
 * found a page at that destination, took it for its own (still in system
 * memory) and dropped the device copy: the region read back as zeros,
 * state SYSTEM (the lost write of seed 2001).
 */
static void remap_back_after_discard_reused(void **state)
{
	struct scene s;
	scene_open(state, &s);
	char *y = reserve();
	pthread_t t;

	s.act_at = DEBUG_FALLBACK_AFTER_DISCARD;
	assert_int_equal(pthread_create(&t, NULL, migrate_thread, &s), 0);
	while (sem_wait(&s.at))
		;
	move_region(s.x, y);
	move_region(y, s.x);
	/* Someone else's memory, with data, where the region was for a while. */
	char *other = mmap(y, N * PS(), PROT_READ | PROT_WRITE,
	                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	assert_ptr_equal(other, y);
	fill_pages(other, 0, N, 9);
	sem_post(&s.go);
	void *rc;
	assert_int_equal(pthread_join(t, &rc), 0);
	assert_int_equal((intptr_t)rc, 0);

	assert_states(s.h, s.x, 0, N, UHMM_STATE_DEVICE, s.a);
	assert_pages(s.x, 0, N, 7);
	assert_pages(other, 0, N, 9);
	assert_int_equal(munmap(other, N * PS()), 0);
	scene_close(&s);
}

/*
 * Away, back over its first address and away again, all before the
 * discard: the CPU pages live on at the third address.  The holder's
 * value belongs to the first move (the oldest from its entry), and the
 * third move takes what the second brought in.  Before, the newest move
 * from the entry took the holder's value (or dropped it as stale): the
 * first move never completed, its destination's entry stayed locked.
 */
static void remap_back_and_away(void **state)
{
	struct scene s;
	scene_open(state, &s);
	char *y = reserve(), *z = reserve();
	pthread_t t;

	s.act_at = DEBUG_FALLBACK_BEFORE_DISCARD;
	assert_int_equal(pthread_create(&t, NULL, migrate_thread, &s), 0);
	while (sem_wait(&s.at))
		;
	move_region(s.x, y);
	move_region(y, s.x);
	move_region(s.x, z);
	struct uhmm_page_info pi[N];
	int qrc = uhmm_query(s.h, z, N, pi);
	sem_post(&s.go);
	void *rc;
	assert_int_equal(pthread_join(t, &rc), 0);
	assert_int_equal((intptr_t)rc, 0);
	assert_int_equal(qrc, 0);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(pi[i].state, UHMM_STATE_SYSTEM);

	assert_states(s.h, z, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(z, 0, N, 7);
	assert_int_equal(uhmm_query(s.h, s.x, 1, pi), -ENOENT);
	assert_migrate(s.h, z, N * PS(), s.b, N, 0);
	assert_pages(z, 0, N, 7);
	assert_int_equal(munmap(z, N * PS()), 0);
	scene_close(&s);
}

/*
 * Away and back twice while held, before the discard: four pending
 * moves, two from the held entry and two to it.  They must be done in the
 * order they were made (away, in, away, in).  Before, the second move
 * here was handed the entry first: the first never completed and the
 * entries stayed held (a hang, seen in uhmm-stress --mremap-back).
 */
static void remap_back_twice(void **state)
{
	struct scene s;
	scene_open(state, &s);
	char *y = reserve(), *z = reserve();
	pthread_t t;

	s.act_at = DEBUG_FALLBACK_BEFORE_DISCARD;
	assert_int_equal(pthread_create(&t, NULL, migrate_thread, &s), 0);
	while (sem_wait(&s.at))
		;
	move_region(s.x, y);
	move_region(y, s.x);
	move_region(s.x, z);
	move_region(z, s.x);
	struct uhmm_page_info pi[N];
	int qrc = uhmm_query(s.h, s.x, N, pi);
	sem_post(&s.go);
	void *rc;
	assert_int_equal(pthread_join(t, &rc), 0);
	assert_int_equal((intptr_t)rc, 0);
	assert_int_equal(qrc, 0);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(pi[i].state, UHMM_STATE_SYSTEM);

	/* Back here before the discard, which took the CPU pages: the
	 * device copy is the data. */
	assert_states(s.h, s.x, 0, N, UHMM_STATE_DEVICE, s.a);
	assert_pages(s.x, 0, N, 7);
	assert_migrate(s.h, s.x, N * PS(), s.b, N, 0);
	assert_pages(s.x, 0, N, 7);
	scene_close(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(remap_back_after_discard),
		TEST_BOTH(remap_back_after_discard_reused),
		TEST_BOTH(remap_back_and_away),
		TEST_BOTH(remap_back_twice),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
