/* SPDX-License-Identifier: MIT */
/*
 * Managed memory that mremap resizes: grown (moved, or in place, as glibc's
 * realloc of a large block does) the new tail is managed memory like the
 * rest; shrunk, the cut tail is forgotten.
 */
#include "common.h"

#include <malloc.h>

#define N 64

/* mremap(MREMAP_MAYMOVE) grows and moves an adopted, device-resident range. */
static void growth_move(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_mmap(N);

	fill_pages(p, 0, N, 1);
	assert_int_equal(uhmm_range_add(h, p, N * PS()), 0);
	assert_migrate(h, p, N * PS(), d, N, 0);
	/* Grown eightfold: the kernel has to move it (nothing is reserved
	 * after it), and its whole new length stays registered. */
	void *q = mremap(p, N * PS(), 8 * N * PS(), MREMAP_MAYMOVE);
	assert_true(q != MAP_FAILED);
	assert_states(h, q, 0, N, UHMM_STATE_DEVICE, d);
	assert_states(h, q, N, 7 * N, UHMM_STATE_NONE, NULL);
	/* The tail reads as zeros, can be written and read back. */
	assert_zero_pages(q, N, 7 * N);
	fill_pages(q, N, 7 * N, 2);
	assert_pages(q, N, 7 * N, 2);
	assert_pages(q, 0, N, 1);
	/* The whole grown range migrates, and comes home on touch. */
	assert_migrate(h, q, 8 * N * PS(), d, 8 * N, 0);
	assert_states(h, q, 0, 8 * N, UHMM_STATE_DEVICE, d);
	assert_pages(q, 0, N, 1);
	assert_pages(q, N, 7 * N, 2);
	assert_states(h, q, 0, 8 * N, UHMM_STATE_SYSTEM, NULL);
	assert_int_equal(uhmm_range_remove(h, q, 8 * N * PS()), 0);
	t_close(h);
	munmap(q, 8 * N * PS());
}

/* Grown in place (no MREMAP_MAYMOVE): the kernel reports no event at all. */
static void growth_in_place(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	/* Reserve room after the range, then give it back. */
	char *p = t_mmap(16 * N);
	assert_int_equal(munmap(p + N * PS(), 15 * N * PS()), 0);

	fill_pages(p, 0, N, 3);
	assert_int_equal(uhmm_range_add(h, p, N * PS()), 0);
	void *q = mremap(p, N * PS(), 4 * N * PS(), 0);
	if (q == MAP_FAILED) {
		/* Something else was mapped in the gap meanwhile. */
		t_close(h);
		munmap(p, N * PS());
		skip();
	}
	assert_ptr_equal(q, p);
	/* A call over the grown range finds it managed before any touch. */
	assert_migrate(h, p, 4 * N * PS(), d, N, 3 * N);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	assert_states(h, p, N, 3 * N, UHMM_STATE_NONE, NULL);
	fill_pages(p, N, 3 * N, 4);
	assert_pages(p, 0, N, 3);
	assert_pages(p, N, 3 * N, 4);
	assert_migrate(h, p, 4 * N * PS(), d, 4 * N, 0);
	assert_states(h, p, 0, 4 * N, UHMM_STATE_DEVICE, d);

	/* Grown again, the tail touched first (a CPU fault, no call before). */
	q = mremap(p, 4 * N * PS(), 6 * N * PS(), 0);
	if (q == MAP_FAILED) {
		assert_int_equal(uhmm_range_remove(h, p, 4 * N * PS()), 0);
		t_close(h);
		munmap(p, 4 * N * PS());
		skip();
	}
	assert_ptr_equal(q, p);
	fill_pages(p, 4 * N, 2 * N, 5);
	assert_pages(p, 4 * N, 2 * N, 5);
	assert_states(h, p, 0, 4 * N, UHMM_STATE_DEVICE, d);
	assert_states(h, p, 4 * N, 2 * N, UHMM_STATE_SYSTEM, NULL);
	assert_migrate(h, p, 6 * N * PS(), d, 6 * N, 0);
	assert_states(h, p, 0, 6 * N, UHMM_STATE_DEVICE, d);
	assert_pages(p, 0, N, 3);
	assert_pages(p, N, 3 * N, 4);
	assert_pages(p, 4 * N, 2 * N, 5);
	assert_states(h, p, 0, 6 * N, UHMM_STATE_SYSTEM, NULL);
	assert_int_equal(uhmm_range_remove(h, p, 6 * N * PS()), 0);
	t_close(h);
	munmap(p, 6 * N * PS());
}

/* Shrunk: the cut tail is no longer managed, the rest is intact. */
static void growth_shrink(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	char *p = t_alloc(h, 8 * N);

	fill_pages(p, 0, 8 * N, 6);
	assert_migrate(h, p, 8 * N * PS(), d, 8 * N, 0);
	assert_ptr_equal(mremap(p, 8 * N * PS(), 2 * N * PS(), 0), p);
	struct uhmm_page_info inf;
	assert_int_equal(uhmm_query(h, p + 2 * N * PS(), 1, &inf), -ENOENT);
	assert_int_equal(uhmm_migrate(h, p, 8 * N * PS(), NULL, NULL), -EINVAL);
	assert_states(h, p, 0, 2 * N, UHMM_STATE_DEVICE, d);
	assert_pages(p, 0, 2 * N, 6);
	assert_migrate(h, p, 2 * N * PS(), d, 2 * N, 0);
	/* New memory where the tail was is ordinary memory. */
	char *t = mmap(p + 2 * N * PS(), 6 * N * PS(), PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (t != MAP_FAILED) {
		assert_ptr_equal(t, p + 2 * N * PS());
		assert_zero_pages(t, 0, 6 * N);
		fill_pages(t, 0, 6 * N, 7);
		assert_pages(t, 0, 6 * N, 7);
		assert_int_equal(uhmm_query(h, t, 1, &inf), -ENOENT);
		munmap(t, 6 * N * PS());
	}
	assert_pages(p, 0, 2 * N, 6);
	assert_int_equal(uhmm_free(h, p, 2 * N * PS()), 0);
	t_close(h);
}

/*
 * glibc's realloc of a block it mmap'ed is an mremap(MREMAP_MAYMOVE) of the
 * whole chunk: adopt the chunk, migrate it, realloc it.  (The sanitizers
 * bring their own allocator.)
 */
static void growth_realloc(void **state)
{
#if defined(T_SANITIZER) || !defined(__GLIBC__)
	(void)state;
	skip();
#else
	mallopt(M_MMAP_THRESHOLD, 128 * 1024); /* fixed: large blocks are mmap'ed */
	const size_t small = N * PS() - 64, big = 8 * N * PS();
	unsigned char *b = malloc(small);
	assert_non_null(b);
	/* An mmap'ed chunk: a page-aligned header of two words, its size in
	 * the second. */
	if (((uintptr_t)b & (PS() - 1)) != 2 * sizeof(size_t)) {
		free(b);
		skip();
	}
	char *chunk = (char *)((uintptr_t)b - 2 * sizeof(size_t));
	size_t csize = ((size_t *)(void *)chunk)[1] & ~(size_t)7;
	for (size_t i = 0; i < small; i++)
		b[i] = (unsigned char)(i * 7 + 3);
	/* Fault-around off: realloc reading the header brings one page home. */
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h);
	assert_int_equal(uhmm_range_add(h, chunk, csize), 0);
	assert_migrate(h, chunk, csize, d, csize / PS(), 0);

	unsigned char *nb = realloc(b, big);
	assert_non_null(nb);
	assert_int_equal(((uintptr_t)nb & (PS() - 1)), 2 * sizeof(size_t));
	char *nchunk = (char *)((uintptr_t)nb - 2 * sizeof(size_t));
	size_t nsize = ((size_t *)(void *)nchunk)[1] & ~(size_t)7;
	assert_true(nsize >= big);
	/* Moved by mremap with its pages: still device-resident. */
	assert_states(h, nchunk, 1, csize / PS() - 1, UHMM_STATE_DEVICE, d);
	for (size_t i = 0; i < small; i++)
		if (nb[i] != (unsigned char)(i * 7 + 3))
			fail_msg("byte %zu: %#x", i, nb[i]);
	for (size_t i = small; i < big; i++)
		nb[i] = (unsigned char)(i * 13 + 1);
	assert_migrate(h, nchunk, nsize, d, nsize / PS(), 0);
	assert_states(h, nchunk, 0, nsize / PS(), UHMM_STATE_DEVICE, d);
	for (size_t i = 0; i < big; i++)
		if (nb[i] != (unsigned char)(i < small ? i * 7 + 3 : i * 13 + 1))
			fail_msg("byte %zu: %#x", i, nb[i]);
	assert_states(h, nchunk, 0, nsize / PS(), UHMM_STATE_SYSTEM, NULL);
	assert_int_equal(uhmm_range_remove(h, nchunk, nsize), 0);
	free(nb);
	t_close(h);
#endif
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(growth_move),
		TEST_BOTH(growth_in_place),
		TEST_BOTH(growth_shrink),
		TEST_BOTH(growth_realloc),
	};
	return cmocka_run_group_tests_name("growth", tests, NULL, NULL);
}
