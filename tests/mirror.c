/* SPDX-License-Identifier: MIT */
/* Mirrors: range fault / snapshot entries, invalidations, the retry protocol. */
#include "testdev.h"

#define N 16
#define LOGN 256

struct inval_log {
	atomic_uint n;
	struct { uintptr_t start, end; enum uhmm_event ev; _Atomic int ready; } e[LOGN];
};

static void log_invalidate(struct uhmm_mirror *m, uintptr_t start, uintptr_t end,
                           enum uhmm_event ev)
{
	struct inval_log *l = uhmm_mirror_priv(m);
	unsigned i = atomic_fetch_add(&l->n, 1);
	if (i < LOGN) {
		l->e[i].start = start;
		l->e[i].end = end;
		l->e[i].ev = ev;
		atomic_store_explicit(&l->e[i].ready, 1, memory_order_release); /* publish */
	}
}

/* Some logged invalidation of type ev covers [a, b). */
static bool logged(struct inval_log *l, enum uhmm_event ev, const void *a, const void *b)
{
	unsigned n = atomic_load(&l->n);
	for (unsigned i = 0; i < n && i < LOGN; i++)
		if (atomic_load_explicit(&l->e[i].ready, memory_order_acquire) && l->e[i].ev == ev &&
		    l->e[i].start <= (uintptr_t)a && l->e[i].end >= (uintptr_t)b)
			return true;
	return false;
}

static struct uhmm_mirror *t_mirror(struct tdev *t, struct inval_log *l)
{
	struct uhmm_mirror_ops ops;
	struct uhmm_mirror *m = NULL;
	memset(&ops, 0, sizeof(ops));
	ops.invalidate = log_invalidate;
	assert_int_equal(uhmm_mirror_register(t->dev, &ops, l, &m), 0);
	assert_non_null(m);
	return m;
}

/* Entries for each kind of page, snapshot and fault. */
static void mirror_entries(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct tdev *t = tdev_create(h, true, 64);
	struct uhmm_device *other = t_dummy(h);
	struct inval_log *l = calloc(1, sizeof(*l));
	assert_non_null(l);
	struct uhmm_mirror *m = t_mirror(t, l);
	void *p = t_alloc(h, 8);
	struct uhmm_range_entry e[8];

	/* 0 none, 1 written, 2 on t, 3 on other, 4 read-only, 5 PROT_NONE, 6-7 none */
	fill_pages(p, 1, 4, 1);
	assert_migrate(h, page_at(p, 2), PS(), t->dev, 1, 0);
	assert_migrate(h, page_at(p, 3), PS(), other, 1, 0);
	assert_int_equal(mprotect(page_at(p, 4), PS(), PROT_READ), 0);
	assert_int_equal(mprotect(page_at(p, 5), PS(), PROT_NONE), 0);

	uint64_t df = t_stats(h).device_faults;
	memset(e, 0, sizeof(e));
	assert_int_equal(uhmm_range_fault(m, p, 8, UHMM_RANGE_SNAPSHOT, e), 0);
	assert_true(e[0].flags & UHMM_ENTRY_NONE);
	assert_false(e[0].flags & UHMM_ENTRY_VALID);
	assert_true(e[1].flags & UHMM_ENTRY_VALID);
	assert_true(e[1].flags & UHMM_ENTRY_WRITE);
	assert_true(e[2].flags & UHMM_ENTRY_DEVICE_LOCAL);
	assert_ptr_equal(e[2].mem, t->m);
	assert_true(e[2].index < t->npages);
	/* The local entry names the device page that holds the data. */
	assert_int_equal(check_buf(uhmm_devmem_host_addr(t->m, e[2].index), 2, 1, 1), -1);
	assert_true(e[3].flags & UHMM_ENTRY_DEVICE_REMOTE);
	assert_false(e[3].flags & UHMM_ENTRY_VALID);
	assert_true(e[4].flags & UHMM_ENTRY_VALID);
	assert_false(e[4].flags & UHMM_ENTRY_WRITE);
	assert_true(e[5].flags & UHMM_ENTRY_ERROR);
	assert_int_equal(t_stats(h).device_faults, df);
	assert_states(h, p, 3, 1, UHMM_STATE_DEVICE, other);
	assert_states(h, p, 0, 1, UHMM_STATE_NONE, NULL);

	/* Faults: PROT_NONE -EFAULT, read-only with WRITE -EPERM. */
	assert_int_equal(uhmm_range_fault(m, page_at(p, 5), 1, UHMM_RANGE_READ, e), -EFAULT);
	assert_int_equal(uhmm_range_fault(m, page_at(p, 4), 1, UHMM_RANGE_READ | UHMM_RANGE_WRITE,
	                                  e), -EPERM);
	/* READ on 0..4: zero page for 0, other device's page comes back, local stays. */
	memset(e, 0, sizeof(e));
	assert_int_equal(uhmm_range_fault(m, p, 5, UHMM_RANGE_READ, e), 0);
	assert_true(t_stats(h).device_faults > df);
	assert_true(e[0].flags & UHMM_ENTRY_VALID);
	assert_true(e[0].flags & UHMM_ENTRY_ZERO);
	assert_true(e[2].flags & UHMM_ENTRY_DEVICE_LOCAL);
	assert_true(e[3].flags & UHMM_ENTRY_VALID);
	assert_states(h, p, 2, 1, UHMM_STATE_DEVICE, t->dev);
	assert_states(h, p, 3, 1, UHMM_STATE_SYSTEM, NULL);
	/* WRITE on 6..7: populated writable. */
	assert_int_equal(uhmm_range_fault(m, page_at(p, 6), 2,
	                                  UHMM_RANGE_READ | UHMM_RANGE_WRITE, e), 0);
	assert_true(e[0].flags & UHMM_ENTRY_VALID);
	assert_true(e[0].flags & UHMM_ENTRY_WRITE);
	assert_false(e[0].flags & UHMM_ENTRY_ZERO);
	assert_states(h, p, 6, 2, UHMM_STATE_SYSTEM, NULL);

	assert_int_equal(mprotect(p, 8 * PS(), PROT_READ | PROT_WRITE), 0);
	assert_pages(p, 1, 4, 1);
	assert_zero_pages(p, 6, 2);
	assert_int_equal(uhmm_mirror_unregister(m), 0);
	t_close(h);
	tdev_free(t);
	free(l);
}

/*
 * Invalidations: migrations by another device, migrations back, uhmm_free,
 * range removal; not for migrations by the mirror's own device.  The retry
 * protocol reports them.
 */
static void mirror_invalidate(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, true, 64);
	struct uhmm_device *other = t_dummy(h);
	struct inval_log *l = calloc(1, sizeof(*l));
	assert_non_null(l);
	struct uhmm_mirror *m = t_mirror(t, l);
	void *p = t_alloc(h, N);
	char *end = page_at(p, N);
	struct uhmm_range_entry e[N];

	fill_pages(p, 0, N, 2);
	uint64_t seq = uhmm_mirror_read_begin(m);
	assert_int_equal(uhmm_range_fault(m, p, N, UHMM_RANGE_READ, e), 0);
	assert_int_equal(uhmm_mirror_read_retry(m, seq), 0);

	/* uhmm_migrate to the mirror's own device is not a migration the device
	 * initiated: its system-memory mappings of these pages go stale, so it
	 * is reported, and read_retry says so. */
	unsigned n0 = atomic_load(&l->n);
	assert_migrate(h, p, N * PS(), t->dev, N, 0);
	assert_true(atomic_load(&l->n) > n0);
	assert_true(logged(l, UHMM_EVENT_MIGRATE, p, end));
	assert_int_equal(uhmm_mirror_read_retry(m, seq), 1);

	/* Back to system memory by a CPU fault / explicit migration: reported
	 * (pages change memory), and read_retry says so. */
	uint64_t inv = t_stats(h).invalidations;
	assert_migrate(h, p, N * PS(), NULL, N, 0);
	/* Migration by another device: reported. */
	seq = uhmm_mirror_read_begin(m);
	n0 = atomic_load(&l->n);
	assert_migrate(h, p, N * PS(), other, N, 0);
	assert_true(atomic_load(&l->n) > n0);
	assert_true(logged(l, UHMM_EVENT_MIGRATE, p, end));
	assert_int_equal(uhmm_mirror_read_retry(m, seq), 1);
	assert_true(t_stats(h).invalidations > inv);

	/* A fresh sequence is clean again. */
	seq = uhmm_mirror_read_begin(m);
	assert_int_equal(uhmm_mirror_read_retry(m, seq), 0);

	/* Range removal and uhmm_free. */
	assert_int_equal(uhmm_range_remove(h, p, N / 2 * PS()), 0);
	assert_true(logged(l, UHMM_EVENT_RANGE_REMOVE, p, page_at(p, N / 2)));
	assert_int_equal(uhmm_mirror_read_retry(m, seq), 1);
	seq = uhmm_mirror_read_begin(m);
	assert_int_equal(uhmm_free(h, page_at(p, N / 2), N / 2 * PS()), 0);
	assert_true(logged(l, UHMM_EVENT_UNMAP, page_at(p, N / 2), end));
	assert_int_equal(uhmm_mirror_read_retry(m, seq), 1);
	assert_pages(p, 0, N / 2, 2);

	/* Unregistered: no more callbacks. */
	assert_int_equal(uhmm_mirror_unregister(m), 0);
	n0 = atomic_load(&l->n);
	void *q = t_alloc(h, N);
	fill_pages(q, 0, N, 3);
	assert_migrate(h, q, N * PS(), other, N, 0);
	assert_int_equal(uhmm_free(h, q, N * PS()), 0);
	assert_int_equal(atomic_load(&l->n), n0);
	munmap(p, N / 2 * PS());
	t_close(h);
	tdev_free(t);
	free(l);
}

/* munmap / madvise(DONTNEED) by the application reach the mirror. */
static void mirror_cpu_changes(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, true, 64);
	struct inval_log *l = calloc(1, sizeof(*l));
	assert_non_null(l);
	struct uhmm_mirror *m = t_mirror(t, l);
	void *p = t_alloc(h, N);
	struct uhmm_range_entry e[N];

	fill_pages(p, 0, N, 4);
	assert_int_equal(uhmm_range_fault(m, p, N, UHMM_RANGE_READ, e), 0);
	assert_int_equal(madvise(page_at(p, 2), 2 * PS(), MADV_DONTNEED), 0);
	/* Events may be handled after the syscall returns: bounded wait. */
	for (int i = 0; i < 5000 && !logged(l, UHMM_EVENT_DISCARD, page_at(p, 2), page_at(p, 4));
	     i++)
		usleep(1000);
	assert_true(logged(l, UHMM_EVENT_DISCARD, page_at(p, 2), page_at(p, 4)));
	assert_zero_pages(p, 2, 2);
	assert_pages(p, 4, N - 4, 4);

	assert_int_equal(munmap(page_at(p, N / 2), N / 2 * PS()), 0);
	for (int i = 0; i < 5000 && !logged(l, UHMM_EVENT_UNMAP, page_at(p, N / 2), page_at(p, N));
	     i++)
		usleep(1000);
	assert_true(logged(l, UHMM_EVENT_UNMAP, page_at(p, N / 2), page_at(p, N)));
	assert_pages(p, 4, N / 2 - 4, 4);
	assert_int_equal(uhmm_free(h, p, N / 2 * PS()), 0);
	t_close(h);
	tdev_free(t);
	free(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(mirror_entries),
		TEST_BOTH(mirror_invalidate),
		TEST_BOTH(mirror_cpu_changes),
	};
	return cmocka_run_group_tests_name("mirror", tests, NULL, NULL);
}
