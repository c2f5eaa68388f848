/* SPDX-License-Identifier: MIT */
/*
 * Events read out of the order their changes were made in (RELIABILITY.md
 * finding 26 (d)).  The kernel queues an munmap's UNMAP, or an mremap's
 * REMAP and its source's UNMAP, only after the change and after dropping
 * its lock, so another thread's later change can be read first.  The
 * library's test aid holds chosen events back in the service thread
 * (debug_hold_addr: read, so their thread goes on, and handled as if
 * queued that many messages later), which makes each order happen every
 * time.  The regions hold device pages: a misread order loses them
 * (zeros) or gives one region's data to another.
 */
#include "common.h"
#include "../../src/internal.h"

#define N 8

struct scene {
	struct uhmm *h;
	struct uhmm_device *a;
};

static void scene_open(void **state, struct scene *s)
{
	atomic_store(&debug_hold_addr, 0); /* a failed test's hold is not ours */
	s->h = t_open(state);
	s->a = t_dummy(s->h);
}

static void scene_close(struct scene *s)
{
	atomic_store(&debug_hold_addr, 0);
	t_close(s->h);
}

/* Managed, filled with seed, on device a. */
static char *region(struct scene *s, unsigned seed)
{
	char *p = t_alloc(s->h, N);
	fill_pages(p, 0, N, seed);
	assert_migrate(s->h, p, N * PS(), s->a, N, 0);
	return p;
}

/* A place to move to, as uhmm-stress does (mremap over it). */
static char *reserve_at(char *at)
{
	int fl = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (at ? MAP_FIXED_NOREPLACE : 0);
	void *y = mmap(at, N * PS(), PROT_NONE, fl, -1, 0);
	assert_true(y != MAP_FAILED);
	if (at)
		assert_ptr_equal(y, at);
	return y;
}

static void move_region(char *from, char *to)
{
	void *np = mremap(from, N * PS(), N * PS(), MREMAP_MAYMOVE | MREMAP_FIXED, to);
	assert_ptr_equal(np, to);
}

/* Hold the next count UNMAP (and, unless unmap_only, REMAP) events from
 * addr back until `after` more messages are read. */
static void hold(char *addr, unsigned count, unsigned after, bool unmap_only)
{
	atomic_store(&debug_hold_unmap_only, unmap_only);
	atomic_store(&debug_hold_count, count);
	atomic_store(&debug_hold_after, after);
	atomic_store(&debug_hold_addr, (uintptr_t)addr);
}

/* Everything read so far handled: adding a range waits for the service
 * thread's batch in hand (service_quiesce). */
static void settle(struct scene *s)
{
	char *p = t_alloc(s->h, 1);
	assert_int_equal(uhmm_free(s->h, p, PS()), 0);
}

/* The region holds its data, on the device, and reads back from there. */
static void assert_region(struct scene *s, char *p, unsigned seed)
{
	assert_states(s->h, p, 0, N, UHMM_STATE_DEVICE, s->a);
	char *buf = malloc(N * PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_read(s->a, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, seed);
	free(buf);
	assert_buf(p, 0, N, seed); /* the CPU faults it home */
}

/*
 * An munmap's UNMAP comes after another region was moved into the freed
 * addresses and on again (the seed-3012 trace of finding 26 (d) moved it
 * back): held until just before the REMAP on (after REMAP(Y→X),
 * UNMAP(Y)).  Before: the REMAP in dropped nothing, the late UNMAP then
 * found nothing mapped at X (the move on had been made, its REMAP not yet
 * handled) and dropped the moved region's pages: NONE / zeros.
 * past_wait: the move back comes only after the REMAP into X stopped
 * waiting for that UNMAP (500 ms), which is then counted as owed to X and
 * taken when it comes.
 */
static void late_unmap_scene(void **state, bool past_wait)
{
	struct scene s;
	scene_open(state, &s);
	char *x = region(&s, 3), *y = region(&s, 5), *z = reserve_at(NULL);
	hold(x, 1, 3, true);
	/* Unmapped and reserved again at once (no other mapping can take X
	 * in between): mmap over it raises the UNMAP. */
	void *r = mmap(x, N * PS(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
	               -1, 0);
	assert_ptr_equal(r, x);
	move_region(y, x);
	if (past_wait)
		usleep(1500000); /* the REMAP into X waits 500 ms at most */
	move_region(x, z); /* on (the seed-3012 trace moved it back to Y) */
	settle(&s);
	assert_region(&s, z, 5);
	assert_int_equal(owed_query(s.h, (uintptr_t)x), 0); /* nothing left owed */
	assert_int_equal(owed_query(s.h, (uintptr_t)y), 0);
	/* The path taken: the UNMAP explained the REMAP into X, or came late. */
	assert_int_equal(atomic_load(&s.h->order_timeouts), past_wait ? 1 : 0);
	assert_int_equal(atomic_load(&s.h->order_explained), past_wait ? 0 : 1);
	assert_int_equal(atomic_load(&s.h->owed_cleared), 0);
	scene_close(&s);
}

static void unmap_late_after_move_in_and_back(void **state)
{
	late_unmap_scene(state, false);
}

static void unmap_later_than_the_wait(void **state)
{
	late_unmap_scene(state, true);
}

/*
 * A region moved X→W has its REMAP (and its source's UNMAP) read after
 * another region's move into X.  Before: the REMAP into X dropped the first
 * region's pages at X as "replaced", and the late REMAP(X→W) then moved
 * the second region's pages to W: W held Y's data, X nothing.
 */
static void remap_away_read_after_remap_in(void **state)
{
	struct scene s;
	scene_open(state, &s);
	char *x = region(&s, 3), *y = region(&s, 5);
	char *w = reserve_at(NULL);
	/* REMAP(X→W), UNMAP(X): read while REMAP(Y→X) waits for them (however
	 * long this thread takes to raise UNMAP(Y)). */
	hold(x, 2, DEBUG_HOLD_UNTIL_WAIT, false);
	move_region(x, w);
	reserve_at(x);
	move_region(y, x);
	settle(&s);
	assert_region(&s, w, 3);
	assert_region(&s, x, 5);
	assert_int_equal(atomic_load(&s.h->order_explained), 1); /* by REMAP(X→W) */
	assert_int_equal(atomic_load(&s.h->order_timeouts), 0);
	assert_int_equal(owed_query(s.h, (uintptr_t)x), 0);
	assert_int_equal(owed_query(s.h, (uintptr_t)w), 0);
	scene_close(&s);
}

/*
 * A move's own source UNMAP comes after another region was moved into the
 * source addresses and on again.  Before: the late UNMAP found nothing
 * mapped at Y and dropped the second region's pages there.
 */
static void source_unmap_late(void **state)
{
	struct scene s;
	scene_open(state, &s);
	char *y = region(&s, 5), *z = region(&s, 7);
	char *x = reserve_at(NULL), *v = reserve_at(NULL);
	hold(y, 1, 3, true); /* UNMAP(Y) of Y→X: after REMAP(Z→Y), UNMAP(Z), before REMAP(Y→V) */
	move_region(y, x);
	reserve_at(y);
	move_region(z, y);
	move_region(y, v);
	settle(&s);
	assert_region(&s, x, 5);
	assert_region(&s, v, 7);
	/* The late UNMAP took the count its move left at Y: none left. */
	assert_int_equal(atomic_load(&s.h->order_timeouts), 0);
	assert_int_equal(owed_query(s.h, (uintptr_t)y), 0);
	assert_int_equal(owed_query(s.h, (uintptr_t)z), 0);
	assert_int_equal(atomic_load(&s.h->owed_cleared), 0);
	scene_close(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(unmap_late_after_move_in_and_back),
		TEST_BOTH(unmap_later_than_the_wait),
		TEST_BOTH(remap_away_read_after_remap_in),
		TEST_BOTH(source_unmap_late),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
