/* SPDX-License-Identifier: MIT */
/* Device memory hotplug: classification, removal, page_free accounting. */
#include "testdev.h"

#define DEV UHMM_DEVMEM_DEVICE
#define MIG UHMM_DEVMEM_ALLOW_MIGRATION
#define UNA UHMM_DEVMEM_UNADDRESSABLE

static struct uhmm_device *host_dev(struct uhmm *h, struct tdev *t)
{
	struct uhmm_device_ops ops;
	struct uhmm_device *d = NULL;
	memset(&ops, 0, sizeof(ops));
	ops.page_free = tdev_page_free;
	assert_int_equal(uhmm_device_create(h, "flags", &ops, UHMM_DEVICE_HOST_BACKED, t, &d), 0);
	return d;
}

/* The classification table of uhmm_devmem_add. */
static void devmem_flags(void **state)
{
	static const struct {
		unsigned flags;
		int rc;
	} tab[] = {
		{ DEV | MIG | UNA, 0 },
		{ MIG | UNA, 0 },            /* DEVICE implied */
		{ UNA, -EINVAL },            /* unreachable data */
		{ DEV | UNA, -EINVAL },
		{ 0, 0 },                    /* = DEVICE: persistent, in place, never migrated */
		{ DEV, 0 },
		{ DEV | MIG, 0 },            /* coherent: in place, migratable */
		{ MIG, 0 },
		{ 1u << 3, -EINVAL },        /* unknown bits */
		{ DEV | MIG | UNA | (1u << 3), -EINVAL },
		{ DEV | MIG | UNA | 0x80000000u, -EINVAL },
		{ 0xffffffffu, -EINVAL },
	};
	struct uhmm *h = t_open(state);
	struct tdev *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	struct uhmm_device *d = host_dev(h, t);

	for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
		struct uhmm_devmem *m = NULL;
		int rc = uhmm_devmem_add(d, 16 * PS(), tab[i].flags, &m);
		if (rc != tab[i].rc) {
			print_error("flags %#x: rc %d expected %d\n", tab[i].flags, rc, tab[i].rc);
			fail();
		}
		if (rc == 0) {
			assert_non_null(m);
			unsigned want = tab[i].flags | DEV;
			assert_int_equal(uhmm_devmem_flags(m), want);
			/* Coherent memory comes in whole 2 MiB granules. */
			assert_int_equal(uhmm_devmem_npages(m),
			                 want == (DEV | MIG) ? UHMM_COHERENT_GRANULE / PS() : 16);
			assert_int_equal(uhmm_devmem_used(m), 0);
			assert_ptr_equal(uhmm_devmem_device(m), d);
			assert_non_null(uhmm_devmem_host_addr(m, 0));
			assert_non_null(uhmm_devmem_host_addr(m, 15));
			assert_int_equal(uhmm_devmem_remove(m), 0);
		}
	}

	/* Sizes. */
	struct uhmm_devmem *m = NULL;
	assert_int_equal(uhmm_devmem_add(d, 0, MIG | UNA, &m), -EINVAL);
	assert_int_equal(uhmm_devmem_add(d, PS() + 1, MIG | UNA, &m), -EINVAL);
	assert_int_equal(uhmm_devmem_add(d, PS() / 2, MIG | UNA, &m), -EINVAL);
	assert_int_equal(uhmm_devmem_add(d, PS(), MIG | UNA, NULL), -EINVAL);
	assert_int_equal(uhmm_devmem_add(NULL, PS(), MIG | UNA, &m), -EINVAL);
	assert_int_equal(uhmm_devmem_remove(NULL), -EINVAL);

	/* Several blocks on one device. */
	struct uhmm_devmem *m1 = NULL, *m2 = NULL;
	assert_int_equal(uhmm_devmem_add(d, PS(), MIG | UNA, &m1), 0);
	assert_int_equal(uhmm_devmem_add(d, 8 * PS(), DEV | MIG | UNA, &m2), 0);
	assert_ptr_not_equal(m1, m2);
	assert_int_equal(uhmm_devmem_npages(m1), 1);
	assert_int_equal(uhmm_devmem_npages(m2), 8);
	assert_ptr_not_equal(uhmm_devmem_host_addr(m2, 0), uhmm_devmem_host_addr(m2, 1));
	assert_int_equal(uhmm_devmem_remove(m2), 0);
	assert_int_equal(uhmm_devmem_remove(m1), 0);

	/* Dummy devices: the same rules on their devmem_flags. */
	struct uhmm_dummy_options o = UHMM_DUMMY_OPTIONS_INIT;
	struct uhmm_device *dd = NULL;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.devmem_flags = DEV; /* persistent */
	assert_int_equal(uhmm_dummy_create(h, &o, &dd), 0);
	assert_non_null(uhmm_dummy_devmem(dd));
	assert_int_equal(uhmm_devmem_flags(uhmm_dummy_devmem(dd)), DEV);
	assert_int_equal(uhmm_device_destroy(dd), 0);
	o.devmem_flags = DEV | MIG; /* coherent */
	assert_int_equal(uhmm_dummy_create(h, &o, &dd), 0);
	assert_int_equal(uhmm_devmem_flags(uhmm_dummy_devmem(dd)), DEV | MIG);
	assert_int_equal(uhmm_device_destroy(dd), 0);
	o.devmem_flags = DEV | MIG | UNA;
	o.path = "/dev/shm/x"; /* private memory has no backing file */
	assert_int_equal(uhmm_dummy_create(h, &o, &dd), -EINVAL);
	o.path = NULL;
	o.devmem_flags = UNA;
	assert_int_equal(uhmm_dummy_create(h, &o, &dd), -EINVAL);
	o.devmem_flags = 1u << 9;
	assert_int_equal(uhmm_dummy_create(h, &o, &dd), -EINVAL);
	o.devmem_flags = MIG | UNA;
	assert_int_equal(uhmm_dummy_create(h, &o, &dd), 0);
	assert_int_equal(uhmm_device_destroy(dd), 0);

	/* A copy device has no host addresses. */
	struct tdev *c = tdev_create(h, false, 4);
	assert_null(uhmm_devmem_host_addr(c->m, 0));

	assert_int_equal(uhmm_device_destroy(d), 0);
	t_close(h);
	assert_int_equal(atomic_load(&c->ndestroy), 1);
	tdev_free(c);
	free(t);
}

/*
 * page_free is called exactly once per device page freed: after CPU faults
 * bring pages back, after an explicit migration back, after uhmm_free.
 */
static void devmem_page_free(void **state)
{
	const size_t n = 32;
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, true, 64);
	void *p = t_alloc(h, n);

	/* Round 1: CPU faults. */
	fill_pages(p, 0, n, 1);
	assert_migrate(h, p, n * PS(), t->dev, n, 0);
	assert_states(h, p, 0, n, UHMM_STATE_DEVICE, t->dev);
	assert_int_equal(uhmm_devmem_used(t->m), n);
	/* The data really is in the device's pages. */
	assert_int_equal(tdev_count_pattern_pages(t, n, 1), n);
	assert_freed_once(t, 0);
	assert_pages(p, 0, n, 1);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_freed_once(t, n);

	/* Round 2: explicit migration back. */
	tdev_reset_counts(t);
	fill_pages(p, 0, n, 2);
	assert_migrate(h, p, n * PS(), t->dev, n, 0);
	assert_int_equal(tdev_count_pattern_pages(t, n, 2), n);
	assert_migrate(h, p, n * PS(), NULL, n, 0);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_freed_once(t, n);
	assert_pages(p, 0, n, 2);

	/* Round 3: uhmm_free of device-resident memory. */
	tdev_reset_counts(t);
	fill_pages(p, 0, n, 3);
	assert_migrate(h, p, n * PS(), t->dev, n, 0);
	assert_int_equal(uhmm_free(h, p, n * PS()), 0);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_freed_once(t, n);

	/* Round 4: munmap of device-resident memory (UNMAP event). */
	tdev_reset_counts(t);
	p = t_alloc(h, n);
	fill_pages(p, 0, n, 4);
	assert_migrate(h, p, n * PS(), t->dev, n, 0);
	assert_int_equal(munmap(p, n * PS()), 0);
	/* The unmap event may be handled after munmap returns: wait (bounded)
	 * until the pages are released, then each must be freed once. */
	for (int i = 0; i < 10000 && uhmm_devmem_used(t->m) != 0; i++)
		usleep(1000);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_freed_once(t, n);

	assert_int_equal(uhmm_devmem_remove(t->m), 0);
	t_close(h);
	tdev_free(t);
}

/* Out of device memory: pages are skipped and counted, not an error. */
static void devmem_exhausted(void **state)
{
	const size_t n = 32;
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, true, 16);
	void *p = t_alloc(h, n);

	fill_pages(p, 0, n, 6);
	assert_migrate(h, p, n * PS(), t->dev, 16, 16);
	assert_int_equal(count_state(h, p, 0, n, UHMM_STATE_DEVICE), 16);
	assert_int_equal(count_state(h, p, 0, n, UHMM_STATE_SYSTEM), 16);
	assert_int_equal(uhmm_devmem_used(t->m), 16);
	assert_pages(p, 0, n, 6);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_freed_once(t, 16);
	t_close(h);
	tdev_free(t);
}

/* Removal evacuates pages in use to system memory, data intact. */
static void devmem_remove_evacuates(void **state)
{
	const size_t n = 32;
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, true, 64);
	void *p = t_alloc(h, n);

	fill_pages(p, 0, n, 7);
	assert_migrate(h, p, n * PS(), t->dev, n, 0);
	assert_int_equal(uhmm_devmem_remove(t->m), 0);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	assert_freed_once(t, n);
	uint64_t f = t_stats(h).cpu_faults;
	assert_pages(p, 0, n, 7);
	assert_int_equal(t_stats(h).cpu_faults, f);

	/* The device has no memory left: everything is skipped. */
	assert_migrate(h, p, n * PS(), t->dev, 0, n);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);

	/* Same through a copy device. */
	struct tdev *c = tdev_create(h, false, 64);
	assert_migrate(h, p, n * PS(), c->dev, n, 0);
	assert_int_equal(tdev_count_pattern_pages(c, n, 7), n);
	assert_int_equal(uhmm_devmem_remove(c->m), 0);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	assert_freed_once(c, n);
	assert_pages(p, 0, n, 7);

	t_close(h);
	tdev_free(t);
	tdev_free(c);
}

/*
 * Removal that cannot evacuate (copy_from_device fails): -EBUSY, the block
 * stays, nothing lost; once the failure clears the data reads right on the
 * CPU and removal succeeds.
 */
static void devmem_remove_busy(void **state)
{
	const size_t n = 32;
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, 64);
	void *p = t_alloc(h, n);

	fill_pages(p, 0, n, 8);
	assert_migrate(h, p, n * PS(), t->dev, n, 0);
	atomic_store(&t->fail_from, TDEV_FAIL_ALWAYS);
	assert_int_equal(uhmm_devmem_remove(t->m), -EBUSY);
	assert_int_equal(uhmm_devmem_used(t->m), n);
	assert_int_equal(uhmm_devmem_npages(t->m), 64);
	assert_states(h, p, 0, n, UHMM_STATE_DEVICE, t->dev);
	assert_int_equal(tdev_count_pattern_pages(t, n, 8), n);
	assert_freed_once(t, 0);

	/* Only some copies fail: still -EBUSY, every page where it was or back
	 * in system memory with its data. */
	atomic_store(&t->fail_from, TDEV_FAIL_ODD);
	assert_int_equal(uhmm_devmem_remove(t->m), -EBUSY);
	assert_int_equal(uhmm_devmem_used(t->m) + count_state(h, p, 0, n, UHMM_STATE_SYSTEM), n);

	atomic_store(&t->fail_from, TDEV_OK);
	assert_pages(p, 0, n, 8);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	assert_int_equal(uhmm_devmem_used(t->m), 0);
	assert_int_equal(uhmm_devmem_remove(t->m), 0);
	assert_freed_once(t, n);
	t_close(h);
	tdev_free(t);
}

/* The dummy device: destroy / release with FAIL_COPY is -EBUSY, then works. */
static void devmem_dummy_busy(void **state)
{
	const size_t n = 32;
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, n);

	fill_pages(p, 0, n, 9);
	assert_migrate(h, p, n * PS(), d, n, 0);
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_FAIL_COPY), 0);
	assert_int_equal(uhmm_device_destroy(d), -EBUSY);
	assert_states(h, p, 0, n, UHMM_STATE_DEVICE, d);
	assert_int_equal(uhmm_dummy_release(d), -EBUSY);
	assert_states(h, p, 0, n, UHMM_STATE_DEVICE, d);

	assert_int_equal(uhmm_dummy_set_fail(d, 0), 0);
	assert_int_equal(uhmm_device_destroy(d), 0);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	uint64_t f = t_stats(h).cpu_faults;
	assert_pages(p, 0, n, 9);
	assert_int_equal(t_stats(h).cpu_faults, f);
	t_close(h);
}

/* uhmm_device_destroy evacuates; page_free and destroy each run as due. */
static void devmem_device_destroy(void **state)
{
	const size_t n = 32;
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, true, 64);
	struct tdev *c = tdev_create(h, false, 64);
	void *p = t_alloc(h, 2 * n);

	fill_pages(p, 0, 2 * n, 10);
	assert_migrate(h, p, n * PS(), t->dev, n, 0);
	assert_migrate(h, page_at(p, n), n * PS(), c->dev, n, 0);

	assert_int_equal(uhmm_device_destroy(t->dev), 0);
	assert_freed_once(t, n);
	assert_int_equal(atomic_load(&t->ndestroy), 1);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);

	atomic_store(&c->fail_from, TDEV_FAIL_ALWAYS);
	assert_int_equal(uhmm_device_destroy(c->dev), -EBUSY);
	assert_int_equal(atomic_load(&c->ndestroy), 0);
	assert_states(h, p, n, n, UHMM_STATE_DEVICE, c->dev);
	atomic_store(&c->fail_from, TDEV_OK);
	assert_int_equal(uhmm_device_destroy(c->dev), 0);
	assert_freed_once(c, n);
	assert_int_equal(atomic_load(&c->ndestroy), 1);
	assert_states(h, p, 0, 2 * n, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, 2 * n, 10);
	t_close(h);
	tdev_free(t);
	tdev_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_ONE(devmem_flags),
		TEST_BOTH(devmem_page_free),
		TEST_BOTH(devmem_exhausted),
		TEST_BOTH(devmem_remove_evacuates),
		TEST_BOTH(devmem_remove_busy),
		TEST_BOTH(devmem_dummy_busy),
		TEST_BOTH(devmem_device_destroy),
	};
	return cmocka_run_group_tests_name("devmem", tests, NULL, NULL);
}
