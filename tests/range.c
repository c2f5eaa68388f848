/* SPDX-License-Identifier: MIT */
/* Managed ranges: adopting memory, removing ranges, freeing, system calls. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "common.h"

#define N 64

/* Adopted memory keeps its contents; removal brings device pages back. */
static void range_adopt_remove(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *q = t_mmap(2 * N);

	fill_pages(q, 0, N, 1);
	assert_int_equal(uhmm_range_add(h, q, 2 * N * PS()), 0);
	assert_states(h, q, 0, N, UHMM_STATE_SYSTEM, NULL);
	assert_states(h, q, N, N, UHMM_STATE_NONE, NULL);
	assert_pages(q, 0, N, 1);

	assert_migrate(h, q, 2 * N * PS(), d, N, N);
	assert_states(h, q, 0, N, UHMM_STATE_DEVICE, d);
	assert_int_equal(uhmm_range_remove(h, q, 2 * N * PS()), 0);
	struct uhmm_page_info inf;
	assert_int_equal(uhmm_query(h, q, 1, &inf), -ENOENT);
	/* Ordinary memory with the data; syscalls work on it in any mode. */
	assert_pages(q, 0, N, 1);
	assert_zero_pages(q, N, N);
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	assert_int_equal(write(fds[1], q, PS()), (ssize_t)PS());
	assert_int_equal(read(fds[0], page_at(q, N), PS()), (ssize_t)PS());
	close(fds[0]);
	close(fds[1]);
	assert_int_equal(memcmp(q, page_at(q, N), PS()), 0);
	/* And can be adopted again. */
	assert_int_equal(uhmm_range_add(h, q, 2 * N * PS()), 0);
	assert_migrate(h, q, N * PS(), d, N, 0);
	assert_pages(q, 0, N, 1);
	t_close(h);
	munmap(q, 2 * N * PS());
}

/* Removing the middle of a range: the rest stays managed and correct. */
static void range_remove_partial(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, 3 * N);

	fill_pages(p, 0, 3 * N, 2);
	assert_migrate(h, p, 3 * N * PS(), d, 3 * N, 0);
	assert_int_equal(uhmm_range_remove(h, page_at(p, N), N * PS()), 0);
	struct uhmm_page_info inf;
	assert_int_equal(uhmm_query(h, page_at(p, N), 1, &inf), -ENOENT);
	assert_int_equal(uhmm_query(h, page_at(p, 2 * N - 1), 1, &inf), -ENOENT);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	assert_states(h, p, 2 * N, N, UHMM_STATE_DEVICE, d);
	uint64_t f = t_stats(h).cpu_faults;
	assert_pages(p, N, N, 2);
	assert_int_equal(t_stats(h).cpu_faults, f);
	/* A migration across the hole is refused. */
	assert_int_equal(uhmm_migrate(h, p, 3 * N * PS(), NULL, NULL), -EINVAL);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	assert_pages(p, 0, N, 2);
	assert_pages(p, 2 * N, N, 2);
	assert_int_equal(uhmm_range_remove(h, p, N * PS()), 0);
	assert_int_equal(uhmm_range_remove(h, page_at(p, 2 * N), N * PS()), 0);
	t_close(h);
	munmap(p, 3 * N * PS());
}

/* uhmm_free of device-resident memory unmaps it and forgets it. */
static void range_free_device(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 3);
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_int_equal(uhmm_free(h, p, N * PS()), 0);
	struct uhmm_page_info inf;
	assert_int_equal(uhmm_query(h, p, 1, &inf), -ENOENT);
	/* The address range is free again. */
	void *q = mmap(p, N * PS(), PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	assert_ptr_equal(q, p);
	assert_zero_pages(q, 0, N);
	munmap(q, N * PS());

	/* Allocate, free, allocate again: new memory reads as zeros. */
	for (int r = 0; r < 5; r++) {
		p = t_alloc(h, N);
		assert_zero_pages(p, 0, N);
		fill_pages(p, 0, N, 4 + (unsigned)r);
		assert_migrate(h, p, N * PS(), d, N, 0);
		assert_pages(p, 0, N / 2, 4 + (unsigned)r);
		assert_int_equal(uhmm_free(h, p, N * PS()), 0);
	}
	t_close(h);
}

/*
 * System calls on device-resident memory: served in THREAD mode where the
 * kernel lets this process handle kernel-mode faults; EFAULT in SIGBUS
 * mode (data untouched).
 */
static void range_syscall(void **state)
{
	struct uhmm_sysinfo si = UHMM_SYSINFO_INIT;
	assert_int_equal(uhmm_sysinfo_get(&si), 0);
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	void *buf = t_mmap(N);
	int fds[2];

	fill_pages(p, 0, N, 5);
	assert_migrate(h, p, N * PS(), d, N, 0);
	assert_int_equal(pipe(fds), 0);
	ssize_t w = write(fds[1], page_at(p, 3), PS());
	if (uhmm_fault_mode(h) == UHMM_FAULT_THREAD && (si.caps & UHMM_SYS_KERNEL_FAULTS)) {
		assert_int_equal(w, (ssize_t)PS());
		assert_int_equal(read(fds[0], buf, PS()), (ssize_t)PS());
		assert_buf(buf, 3, 1, 5);
		/* read(2) into a device-resident page. */
		fill_buf(buf, 4, 1, 6);
		assert_int_equal(write(fds[1], buf, PS()), (ssize_t)PS());
		assert_int_equal(read(fds[0], page_at(p, 4), PS()), (ssize_t)PS());
		assert_pages(p, 4, 1, 6);
	} else if (uhmm_fault_mode(h) == UHMM_FAULT_SIGBUS) {
		assert_int_equal(w, -1);
		assert_int_equal(errno, EFAULT);
	}
	/* Whatever happened, the data is intact. */
	assert_pages(p, 0, 4, 5);
	assert_pages(p, 5, N - 5, 5);
	close(fds[0]);
	close(fds[1]);
	munmap(buf, N * PS());
	t_close(h);
}

/*
 * read(2) into managed memory that was never touched.  Where kernel-mode
 * faults are served (THREAD mode with the privilege) the kernel's own fault
 * comes to uhmm and is zero-filled.  In SIGBUS mode the kernel fails it with
 * EFAULT (README, Limits): nothing is written, and a page the CPU touched —
 * also one that was migrated and brought home — takes the read.
 */
static void range_syscall_fresh(void **state)
{
	struct uhmm_sysinfo si = UHMM_SYSINFO_INIT;
	assert_int_equal(uhmm_sysinfo_get(&si), 0);
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	void *src = t_mmap(1);
	int fds[2];

	fill_buf(src, 0, 1, 8);
	assert_int_equal(pipe(fds), 0);
	assert_int_equal(write(fds[1], src, PS()), (ssize_t)PS());
	ssize_t r = read(fds[0], page_at(p, 1), PS());
	if (uhmm_fault_mode(h) == UHMM_FAULT_THREAD && (si.caps & UHMM_SYS_KERNEL_FAULTS)) {
		assert_int_equal(r, (ssize_t)PS());
		assert_int_equal(memcmp(page_at(p, 1), src, PS()), 0);
	} else {
		assert_int_equal(r, -1);
		assert_int_equal(errno, EFAULT);
		assert_states(h, p, 1, 1, UHMM_STATE_NONE, NULL);
		assert_int_equal(check_zero(p, 1, 1), -1);
	}
	close(fds[0]);
	close(fds[1]);
	assert_int_equal(pipe(fds), 0);
	/* Touched, migrated and brought home: I/O into it works in any mode. */
	fill_pages(p, 2, 1, 9);
	assert_migrate(h, page_at(p, 2), PS(), d, 1, 0);
	assert_int_equal(uhmm_migrate(h, page_at(p, 2), PS(), NULL, NULL), 0);
	assert_states(h, p, 2, 1, UHMM_STATE_SYSTEM, NULL);
	assert_int_equal(write(fds[1], src, PS()), (ssize_t)PS());
	assert_int_equal(read(fds[0], page_at(p, 2), PS()), (ssize_t)PS());
	assert_int_equal(memcmp(page_at(p, 2), src, PS()), 0);
	close(fds[0]);
	close(fds[1]);
	munmap(src, PS());
	t_close(h);
}

/* A huge sparse range costs nothing until touched; metadata stays sparse. */
static void range_sparse(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	const size_t big = (size_t)64 << 30; /* 64 GiB of address space */
	void *p = NULL;

	assert_int_equal(uhmm_alloc(h, big, &p), 0);
	size_t npg = big / PS();
	size_t idx[] = { 0, 1, npg / 3, npg / 2 + 7, npg - 1 };
	for (size_t k = 0; k < 5; k++)
		fill_pages(p, idx[k], 1, 7);
	for (size_t k = 0; k < 5; k++) {
		assert_migrate(h, page_at(p, idx[k]), PS(), d, 1, 0);
		assert_states(h, p, idx[k], 1, UHMM_STATE_DEVICE, d);
	}
	assert_states(h, p, npg / 4, 1, UHMM_STATE_NONE, NULL);
	assert_states(h, p, npg - 100, 1, UHMM_STATE_NONE, NULL);
	for (size_t k = 0; k < 5; k++)
		assert_pages(p, idx[k], 1, 7);
	assert_int_equal(uhmm_free(h, p, big), 0);
	t_close(h);
}

/*
 * The application munmaps managed memory itself, then allocates again: the
 * kernel typically hands back the same addresses, which must not still
 * count as managed (no -EEXIST), and the new memory must work.
 */
static void range_unmap_reuse(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);

	for (unsigned r = 0; r < 200; r++) {
		void *p = NULL;
		int rc = uhmm_alloc(h, N * PS(), &p);
		if (rc != 0)
			print_error("round %u: uhmm_alloc = %d\n", r, rc);
		assert_int_equal(rc, 0);
		fill_pages(p, 0, N, r);
		if (r % 4 == 3)
			assert_migrate(h, p, N * PS(), d, N, 0);
		assert_int_equal(munmap(page_at(p, N / 2), N / 2 * PS()), 0);
		assert_pages(p, 0, N / 2, r);
		assert_int_equal(uhmm_free(h, p, N / 2 * PS()), 0);
	}
	t_close(h);
}

struct unmapper {
	void *p;
	size_t len;
	atomic_int started, done;
};

static void *unmap_thread(void *arg)
{
	struct unmapper *u = arg;
	atomic_store(&u->started, 1);
	int rc = munmap(u->p, u->len); /* returns once its event is read */
	atomic_store(&u->done, rc == 0 ? 1 : -1);
	return NULL;
}

/*
 * Another thread unmaps a managed range; before its UNMAP is handled (the
 * service thread is slowed down), this thread maps plain memory at the
 * same addresses.  Calls about those addresses must answer for the new
 * mapping, which is not managed, not from the registry's stale entry:
 * uhmm_migrate -EINVAL, uhmm_query -ENOENT, and the new memory untouched.
 * A round in which the munmap returned before the new mapping was made
 * (or something else took the addresses) tests nothing: done again.
 */
static void range_reused_by_other_thread(void **state)
{
	assert_int_equal(setenv("UHMM_DEBUG_DELAY", "service:30000", 1), 0);
	struct uhmm *h = t_open(state);
	unsetenv("UHMM_DEBUG_DELAY");
	struct uhmm_device *d = t_dummy(h);
	int tested = 0;
	for (int round = 0; round < 20 && !tested; round++) {
		void *p = t_alloc(h, N);
		fill_pages(p, 0, N, 11);
		struct unmapper u = { .p = p, .len = N * PS() };
		pthread_t t;
		assert_int_equal(pthread_create(&t, NULL, unmap_thread, &u), 0);
		while (!atomic_load(&u.started))
			sched_yield();
		void *q = MAP_FAILED;
		/* The addresses are free once the kernel has unmapped them. */
		while (q == MAP_FAILED && !atomic_load(&u.done)) {
			q = mmap(p, N * PS(), PROT_READ | PROT_WRITE,
			         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			assert_true(q != MAP_FAILED || errno == EEXIST);
		}
		bool in_window = q == p && !atomic_load(&u.done);
		if (q != MAP_FAILED && q != p) {
			munmap(q, N * PS()); /* a kernel without MAP_FIXED_NOREPLACE: a hint */
			q = MAP_FAILED;
		}
		if (in_window) {
			fill_pages(q, 0, N, 12);
			struct uhmm_migrate_result r;
			assert_int_equal(uhmm_migrate(h, q, N * PS(), d, &r), -EINVAL);
			struct uhmm_page_info pi;
			assert_int_equal(uhmm_query(h, q, 1, &pi), -ENOENT);
			tested = 1;
		}
		assert_int_equal(pthread_join(t, NULL), 0);
		assert_int_equal(atomic_load(&u.done), 1);
		if (in_window)
			assert_pages(q, 0, N, 12);
		if (q != MAP_FAILED)
			assert_int_equal(munmap(q, N * PS()), 0);
	}
	assert_true(tested); /* the window was reached (30 ms wide) */
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(range_adopt_remove),
		TEST_BOTH(range_remove_partial),
		TEST_BOTH(range_free_device),
		TEST_BOTH(range_syscall),
		TEST_BOTH(range_syscall_fresh),
		TEST_BOTH(range_sparse),
		TEST_BOTH(range_unmap_reuse),
		TEST_BOTH(range_reused_by_other_thread),
	};
	return cmocka_run_group_tests_name("range", tests, NULL, NULL);
}
