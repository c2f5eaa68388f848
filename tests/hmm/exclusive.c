/* SPDX-License-Identifier: MIT */
/*
 * Exclusive (atomic) device access: exclusive, exclusive_mprotect,
 * exclusive_cow.  uhmm_dummy_exclusive moves the pages into the device's
 * memory and marks them exclusive; any CPU touch brings a page back and
 * revokes its exclusivity (uhmm_dummy_check_exclusive: -EPERM while a page
 * is still exclusive, 0 once the CPU revoked it), on private and on
 * coherent devices.
 */
#include "hmm.h"

#define N 16

static void exclusive(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	/* The last quarter is never touched: exclusive populates it. */
	fill_pages(p, 0, 3 * N / 4, 1);

	assert_int_equal(uhmm_dummy_exclusive(d, p, N), 0);
	assert_states(h, p, 0, N, UHMM_STATE_DEVICE, d);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, N), -EPERM);
	/* The device works on its exclusive pages. */
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), 0);
	assert_buf(buf, 0, 3 * N / 4, 1);
	assert_int_equal(check_zero(buf, 3 * N / 4, N / 4), -1);
	fill_buf(buf, 0, N / 2, 2);
	assert_int_equal(uhmm_dummy_write(d, p, buf, N / 2, NULL), 0);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, N), -EPERM);

	/* A CPU read of page 1 revokes page 1 only. */
	assert_int_equal(touch_read(p, 1), pat(2, 1, 0));
	assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(p, 1), 1), 0);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, 1), -EPERM);
	assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(p, 2), N - 2), -EPERM);
	/* A CPU write of page 3 too. */
	*(volatile uint64_t *)page_at(p, 3) = 42;
	assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(p, 3), 1), 0);
	/* The CPU touches everything: nothing exclusive any more. */
	assert_pages(p, 0, 1, 2);
	assert_pages(p, 2, 1, 2);
	assert_pages(p, 4, N / 2 - 4, 2);
	assert_pages(p, N / 2, N / 4, 1);
	assert_zero_pages(p, 3 * N / 4, N / 4);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, N), 0);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);

	/* Exclusive again; another device's access revokes it too. */
	struct uhmm_device *o = t_dummy(h);
	assert_int_equal(uhmm_dummy_exclusive(d, p, 2), 0);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, 2), -EPERM);
	assert_int_equal(uhmm_dummy_read(o, p, buf, 1, NULL), 0);
	assert_buf(buf, 0, 1, 2);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, 1), 0);
	assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(p, 1), 1), -EPERM);
	/* A page another device holds exclusively: the header says -EBUSY
	 * ("held by another device"); the kernel's make_device_exclusive would
	 * take it (a device access revokes another device's exclusivity).
	 * Accept either, each with its consequences. */
	assert_int_equal(uhmm_dummy_exclusive(o, page_at(p, 5), 1), 0);
	assert_states(h, p, 5, 1, UHMM_STATE_DEVICE, o);
	int rc = uhmm_dummy_exclusive(d, page_at(p, 5), 1);
	if (rc == 0) {
		assert_states(h, p, 5, 1, UHMM_STATE_DEVICE, d);
		assert_int_equal(uhmm_dummy_check_exclusive(o, page_at(p, 5), 1), 0);
		assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(p, 5), 1), -EPERM);
	} else {
		assert_int_equal(rc, -EBUSY);
		assert_states(h, p, 5, 1, UHMM_STATE_DEVICE, o);
		assert_int_equal(uhmm_dummy_check_exclusive(o, page_at(p, 5), 1), -EPERM);
	}
	assert_pages(p, 5, 1, 2);
	assert_int_equal(uhmm_dummy_check_exclusive(o, page_at(p, 5), 1), 0);
	assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(p, 5), 1), 0);
	free(buf);
	t_close(h);
}

/*
 * After exclusive, uhmm_mprotect(PROT_READ): a device write is -EPERM,
 * reads still work and the data is intact; PROT_NONE: reads -EFAULT.
 */
static void exclusive_mprotect(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	fill_pages(p, 0, N, 1);

	assert_int_equal(uhmm_dummy_exclusive(d, p, N), 0);
	assert_int_equal(uhmm_mprotect(h, p, N * PS(), PROT_READ), 0);
	fill_buf(buf, 0, N, 2);
	assert_int_equal(uhmm_dummy_write(d, p, buf, N, NULL), -EPERM);
	memset(buf, 0, N * PS());
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 1);
	assert_int_equal(uhmm_mprotect(h, p, N * PS(), PROT_NONE), 0);
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), -EFAULT);
	assert_int_equal(uhmm_mprotect(h, p, N * PS(), PROT_READ), 0);
	/* The CPU reads its data back through the read-only mapping. */
	assert_pages(p, 0, N, 1);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, N), 0);
	assert_int_equal(uhmm_mprotect(h, p, N * PS(), PROT_READ | PROT_WRITE), 0);
	fill_buf(buf, 0, N, 2);
	assert_int_equal(uhmm_dummy_write(d, p, buf, N, NULL), 0);
	assert_pages(p, 0, N, 2);
	free(buf);
	t_close(h);
}

/*
 * Exclusive access on a coherent device: the CPU reads and writes coherent
 * pages in place, so exclusive pages leave coherent memory for a private
 * block of the device (uhmm.h); any CPU access, read or write, revokes
 * the exclusivity, as on a private device.  Covered: pages that were
 * coherent on the device (their granule comes home first) and pages in
 * system memory.
 */
static void exclusive_coherent(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_dummy_options o = UHMM_DUMMY_OPTIONS_INIT;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.devmem_flags = UHMM_DEVMEM_DEVICE | UHMM_DEVMEM_ALLOW_MIGRATION;
	struct uhmm_device *d = NULL;
	int rc = uhmm_dummy_create(h, &o, &d);
	if (rc == -EOPNOTSUPP) {
		t_close(h);
		skip(); /* no write-protect on shmem here: no coherent memory */
	}
	assert_int_equal(rc, 0);
	const size_t g = UHMM_COHERENT_GRANULE / PS();
	void *p = t_alloc(h, 2 * g);
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	fill_pages(p, 0, 2 * g, 1);
	assert_migrate(h, p, g * PS(), d, g, 0);
	assert_states(h, p, 0, g, UHMM_STATE_DEVICE_COHERENT, d);

	/* Coherent pages made exclusive. */
	assert_int_equal(uhmm_dummy_exclusive(d, p, N), 0);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, N), -EPERM);
	assert_int_equal(uhmm_dummy_read(d, p, buf, N, NULL), 0);
	assert_buf(buf, 0, N, 1);
	fill_buf(buf, 0, N / 2, 2);
	assert_int_equal(uhmm_dummy_write(d, p, buf, N / 2, NULL), 0);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, N), -EPERM);

	/* A CPU read revokes page 1 only, a CPU write page 3. */
	assert_int_equal(touch_read(p, 1), pat(2, 1, 0));
	assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(p, 1), 1), 0);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, 1), -EPERM);
	assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(p, 2), 1), -EPERM);
	/* The others are out of the CPU's reach (device-private residency);
	 * the rest of the granule came home with its data. */
	assert_states(h, p, 0, 1, UHMM_STATE_DEVICE, d);
	assert_states(h, p, 1, 1, UHMM_STATE_SYSTEM, NULL);
	assert_states(h, p, 2, N - 2, UHMM_STATE_DEVICE, d);
	assert_states(h, p, N, g - N, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, N, g - N, 1);
	assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(p, 2), N - 2), -EPERM);
	*(volatile uint64_t *)page_at(p, 3) = 42;
	assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(p, 3), 1), 0);
	assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(p, 4), N - 4), -EPERM);
	assert_pages(p, 0, 1, 2);
	assert_pages(p, 2, 1, 2);
	assert_pages(p, 4, N / 2 - 4, 2);
	assert_pages(p, N / 2, N / 2, 1);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, N), 0);
	assert_states(h, p, 0, N, UHMM_STATE_SYSTEM, NULL);

	/* Pages in system memory (the second granule): the same. */
	void *q = page_at(p, g + 5);
	assert_int_equal(uhmm_dummy_exclusive(d, q, 2), 0);
	assert_states(h, p, g + 5, 2, UHMM_STATE_DEVICE, d);
	assert_int_equal(uhmm_dummy_check_exclusive(d, q, 2), -EPERM);
	*(volatile uint64_t *)q = 7;
	assert_int_equal(uhmm_dummy_check_exclusive(d, q, 1), 0);
	assert_int_equal(uhmm_dummy_check_exclusive(d, page_at(q, 1), 1), -EPERM);
	assert_pages(p, g + 6, 1, 1);
	assert_int_equal(uhmm_dummy_check_exclusive(d, q, 2), 0);

	/* Coherent migration still works on what is not exclusive. */
	assert_migrate(h, page_at(p, g), g * PS(), d, g, 0);
	assert_states(h, p, g, g, UHMM_STATE_DEVICE_COHERENT, d);
	assert_int_equal(*(volatile uint64_t *)q, 7);
	assert_pages(p, g + 6, 1, 1);
	free(buf);
	t_close(h);
}

enum { C_OK = 0, C_DATA = 10, C_WRITE };

/*
 * Exclusive, then fork: the child sees the right data; the parent's data
 * is right too (fork brought the pages home, which revokes exclusivity),
 * and the two stay private to each other.
 */
static void exclusive_cow(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	void *buf = malloc(N * PS());
	assert_non_null(buf);
	fill_pages(p, 0, N, 1);
	assert_int_equal(uhmm_dummy_exclusive(d, p, N), 0);
	fill_buf(buf, 0, N / 2, 2);
	assert_int_equal(uhmm_dummy_write(d, p, buf, N / 2, NULL), 0);

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(10);
		if (check_pages(p, 0, N / 2, 2) != -1 || check_pages(p, N / 2, N / 2, 1) != -1)
			_exit(C_DATA);
		fill_pages(p, 0, N, 3);
		if (check_pages(p, 0, N, 3) != -1)
			_exit(C_WRITE);
		_exit(C_OK);
	}
	assert_int_equal(wait_child(pid), C_OK);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, N), 0);
	assert_pages(p, 0, N / 2, 2);
	assert_pages(p, N / 2, N / 2, 1);
	/* Exclusive again after the fork, revoked by the CPU again. */
	assert_int_equal(uhmm_dummy_exclusive(d, p, N), 0);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, N), -EPERM);
	assert_pages(p, 0, N / 2, 2);
	assert_int_equal(uhmm_dummy_check_exclusive(d, p, N / 2), 0);
	free(buf);
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(exclusive),
		TEST_BOTH(exclusive_mprotect),
		TEST_BOTH(exclusive_coherent),
		TEST_BOTH(exclusive_cow),
	};
	return cmocka_run_group_tests_name("hmm_exclusive", tests, NULL, NULL);
}
