/* SPDX-License-Identifier: MIT */
/* Bad arguments: every call returns a negative errno, never aborts. */
#include <sys/syscall.h>
#include <sys/wait.h>

#include "uhmm_cuda.h"

#include "testdev.h"

static void *wrap_addr(void)
{
	return (void *)(UINTPTR_MAX - PS() + 1); /* last page of the address space */
}

static void bad_open(void **state)
{
	(void)state;
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	struct uhmm *h = NULL;
	assert_int_equal(uhmm_open(NULL, NULL), -EINVAL);
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	assert_int_equal(uhmm_open(&o, NULL), -EINVAL);
	o.fault_mode = (enum uhmm_fault_mode)42;
	assert_int_equal(uhmm_open(&o, &h), -EINVAL);
	assert_null(h);
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.flags = 1u << 30;
	assert_int_equal(uhmm_open(&o, &h), -EINVAL);
	assert_int_equal(uhmm_close(NULL), -EINVAL);

	/* NULL options: defaults. */
	assert_int_equal(uhmm_open(NULL, &h), 0);
	assert_non_null(h);
	assert_true(uhmm_fault_mode(h) == UHMM_FAULT_THREAD ||
	            uhmm_fault_mode(h) == UHMM_FAULT_SIGBUS);
	assert_int_equal(uhmm_close(h), 0);
}

static void bad_alloc_free(void **state)
{
	struct uhmm *h = t_open(state);
	void *p = NULL;
	assert_int_equal(uhmm_alloc(NULL, PS(), &p), -EINVAL);
	assert_int_equal(uhmm_alloc(h, 0, &p), -EINVAL);
	assert_int_equal(uhmm_alloc(h, PS() + 1, &p), -EINVAL);
	assert_int_equal(uhmm_alloc(h, PS() - 1, &p), -EINVAL);
	assert_int_equal(uhmm_alloc(h, PS(), NULL), -EINVAL);
	assert_int_equal(uhmm_alloc(h, SIZE_MAX & ~(PS() - 1), &p), -ENOMEM);

	p = t_alloc(h, 8);
	void *q = t_mmap(8);
	assert_int_equal(uhmm_free(NULL, p, 8 * PS()), -EINVAL);
	assert_int_equal(uhmm_free(h, p, 0), -EINVAL);
	assert_int_equal(uhmm_free(h, p, PS() + 1), -EINVAL);
	assert_int_equal(uhmm_free(h, (char *)p + 1, PS()), -EINVAL);
	assert_int_equal(uhmm_free(h, q, 8 * PS()), -EINVAL);    /* not managed */
	assert_int_equal(uhmm_free(h, p, 9 * PS()), -EINVAL);    /* partly managed */
	assert_int_equal(uhmm_free(h, wrap_addr(), 2 * PS()), -EINVAL);
	/* Nothing was freed by the failures. */
	fill_pages(p, 0, 8, 1);
	assert_pages(p, 0, 8, 1);
	assert_states(h, p, 0, 8, UHMM_STATE_SYSTEM, NULL);

	/* Memory of another context. */
	struct uhmm *h2 = t_open(state);
	assert_int_equal(uhmm_free(h2, p, 8 * PS()), -EINVAL);
	assert_pages(p, 0, 8, 1);

	/* Partial free, then the rest; a second free fails. */
	assert_int_equal(uhmm_free(h, page_at(p, 4), 4 * PS()), 0);
	assert_pages(p, 0, 4, 1);
	assert_int_equal(uhmm_free(h, p, 4 * PS()), 0);
	assert_int_equal(uhmm_free(h, p, 4 * PS()), -EINVAL);
	munmap(q, 8 * PS());
	t_close(h2);
	t_close(h);
}

static void bad_range(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm *h2 = t_open(state);
	void *q = t_mmap(16);

	fill_pages(q, 0, 16, 2);
	assert_int_equal(uhmm_range_add(NULL, q, PS()), -EINVAL);
	assert_int_equal(uhmm_range_add(h, q, 0), -EINVAL);
	assert_int_equal(uhmm_range_add(h, q, PS() + 1), -EINVAL);
	assert_int_equal(uhmm_range_add(h, (char *)q + 1, PS()), -EINVAL);
	assert_int_equal(uhmm_range_add(h, wrap_addr(), 2 * PS()), -EINVAL);
	assert_int_equal(uhmm_range_add(h, NULL, PS()), -EINVAL); /* not mapped */

	assert_int_equal(uhmm_range_add(h, page_at(q, 4), 8 * PS()), 0);
	/* Overlaps: same context, another context, partial on either side. */
	assert_int_equal(uhmm_range_add(h, page_at(q, 4), 8 * PS()), -EEXIST);
	assert_int_equal(uhmm_range_add(h2, page_at(q, 4), 8 * PS()), -EEXIST);
	assert_int_equal(uhmm_range_add(h, q, 5 * PS()), -EEXIST);
	assert_int_equal(uhmm_range_add(h2, page_at(q, 11), 2 * PS()), -EEXIST);
	assert_int_equal(uhmm_range_add(h2, q, 16 * PS()), -EEXIST);
	assert_int_equal(uhmm_range_add(h2, page_at(q, 6), PS()), -EEXIST);
	/* Adjacent ranges are fine, in another context too. */
	assert_int_equal(uhmm_range_add(h2, q, 4 * PS()), 0);
	assert_int_equal(uhmm_range_add(h, page_at(q, 12), 4 * PS()), 0);
	assert_pages(q, 0, 16, 2);

	/* Memory from uhmm_alloc of one context cannot be adopted by another. */
	void *p = t_alloc(h, 4);
	assert_int_equal(uhmm_range_add(h2, p, 4 * PS()), -EEXIST);
	assert_int_equal(uhmm_range_add(h, p, 4 * PS()), -EEXIST);

	/* Shared and file-backed mappings are refused. */
	void *s = mmap(NULL, 4 * PS(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(s != MAP_FAILED);
	assert_int_equal(uhmm_range_add(h, s, 4 * PS()), -EINVAL);
	int fd = (int)syscall(SYS_memfd_create, "uhmm-bad", 0);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)(4 * PS())), 0);
	void *fs = mmap(NULL, 4 * PS(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(fs != MAP_FAILED);
	assert_int_equal(uhmm_range_add(h, fs, 4 * PS()), -EINVAL);
	void *fp = mmap(NULL, 4 * PS(), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	assert_true(fp != MAP_FAILED);
	assert_int_equal(uhmm_range_add(h, fp, 4 * PS()), -EINVAL);
	struct uhmm_page_info inf;
	assert_int_equal(uhmm_query(h, s, 1, &inf), -ENOENT);
	munmap(s, 4 * PS());
	munmap(fs, 4 * PS());
	munmap(fp, 4 * PS());
	close(fd);

	/* Removal. */
	void *u = t_mmap(4);
	assert_int_equal(uhmm_range_remove(NULL, q, PS()), -EINVAL);
	assert_int_equal(uhmm_range_remove(h, page_at(q, 4), 0), -EINVAL);
	assert_int_equal(uhmm_range_remove(h, page_at(q, 4), PS() + 1), -EINVAL);
	assert_int_equal(uhmm_range_remove(h, (char *)page_at(q, 4) + 1, PS()), -EINVAL);
	assert_int_equal(uhmm_range_remove(h, u, 4 * PS()), -ENOENT);
	assert_int_equal(uhmm_range_remove(h, q, 4 * PS()), -ENOENT);     /* h2's */
	assert_int_equal(uhmm_range_remove(h, page_at(q, 2), 4 * PS()), -ENOENT); /* partly */
	assert_int_equal(uhmm_range_remove(h, page_at(q, 4), 8 * PS()), 0);
	assert_int_equal(uhmm_range_remove(h, page_at(q, 4), 8 * PS()), -ENOENT);
	assert_int_equal(uhmm_query(h, page_at(q, 4), 1, &inf), -ENOENT);
	/* Once removed it may be adopted again. */
	assert_int_equal(uhmm_range_add(h2, page_at(q, 4), 8 * PS()), 0);
	assert_pages(q, 0, 16, 2);
	munmap(u, 4 * PS());
	t_close(h2);
	t_close(h);
	munmap(q, 16 * PS());
}

static void bad_query_migrate(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm *h2 = t_open(state);
	struct uhmm_device *d = t_dummy(h), *d2 = t_dummy(h2);
	void *p = t_alloc(h, 8);
	void *q = t_mmap(8);
	struct uhmm_page_info inf[9];
	struct uhmm_migrate_result r;

	fill_pages(p, 0, 8, 3);
	assert_int_equal(uhmm_query(NULL, p, 1, inf), -EINVAL);
	assert_int_equal(uhmm_query(h, p, 1, NULL), -EINVAL);
	assert_int_equal(uhmm_query(h, p, 0, inf), -EINVAL);
	assert_int_equal(uhmm_query(h, (char *)p + 1, 1, inf), -EINVAL);
	assert_int_equal(uhmm_query(h, wrap_addr(), 2, inf), -EINVAL);
	assert_int_equal(uhmm_query(h, q, 1, inf), -ENOENT);
	assert_int_equal(uhmm_query(h, p, 9, inf), -ENOENT);
	assert_int_equal(uhmm_query(h2, p, 1, inf), -ENOENT);
	assert_int_equal(uhmm_query(h, p, 8, inf), 0);

	assert_int_equal(uhmm_migrate(NULL, p, PS(), d, &r), -EINVAL);
	assert_int_equal(uhmm_migrate(h, p, 0, d, &r), -EINVAL);
	assert_int_equal(uhmm_migrate(h, p, PS() + 1, d, &r), -EINVAL);
	assert_int_equal(uhmm_migrate(h, (char *)p + 1, PS(), d, &r), -EINVAL);
	assert_int_equal(uhmm_migrate(h, wrap_addr(), 2 * PS(), d, &r), -EINVAL);
	assert_int_equal(uhmm_migrate(h, p, 9 * PS(), d, &r), -EINVAL);
	assert_int_equal(uhmm_migrate(h, q, PS(), d, &r), -EINVAL);
	assert_int_equal(uhmm_migrate(h, p, 8 * PS(), d2, &r), -EINVAL);
	assert_states(h, p, 0, 8, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, 8, 3);

	struct uhmm_stats st = UHMM_STATS_INIT;
	assert_int_equal(uhmm_stats_get(h, &st), 0);
	assert_int_equal(uhmm_stats_get(h, NULL), -EINVAL);
	assert_int_equal(uhmm_stats_get(NULL, &st), -EINVAL);
	munmap(q, 8 * PS());
	t_close(h2);
	t_close(h);
}

static void noop_invalidate(struct uhmm_mirror *m, uintptr_t s, uintptr_t e, enum uhmm_event ev)
{
	(void)m;
	(void)s;
	(void)e;
	(void)ev;
}

static void bad_devices(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h), *x = NULL;
	struct uhmm_device_ops ops;
	void *p = t_alloc(h, 8);
	uint8_t snap[8];

	/* Dummy creation and operations. */
	assert_int_equal(uhmm_dummy_create(NULL, NULL, &x), -EINVAL);
	assert_int_equal(uhmm_dummy_create(h, NULL, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_set_fail(d, 1u << 7), -EINVAL);
	assert_int_equal(uhmm_dummy_set_fail(d, 0xffffffffu), -EINVAL);
	assert_int_equal(uhmm_dummy_set_fail(NULL, 0), -EINVAL);
	assert_int_equal(uhmm_dummy_set_fail(d, 0), 0);
	void *big = malloc(8 * PS());
	assert_non_null(big);
	assert_int_equal(uhmm_dummy_read(NULL, p, big, 1, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_read(d, p, NULL, 1, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_read(d, p, big, 0, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_read(d, (char *)p + 1, big, 1, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_read(d, wrap_addr(), big, 2, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_write(NULL, p, big, 1, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_write(d, p, NULL, 1, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_write(d, p, big, 0, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_write(d, (char *)p + 1, big, 1, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_snapshot(NULL, p, 8, snap), -EINVAL);
	assert_int_equal(uhmm_dummy_snapshot(d, p, 8, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_snapshot(d, p, 0, snap), -EINVAL);
	assert_int_equal(uhmm_dummy_snapshot(d, (char *)p + 1, 1, snap), -EINVAL);
	assert_int_equal(uhmm_dummy_release(NULL), -EINVAL);

	/* Device creation. */
	memset(&ops, 0, sizeof(ops));
	ops.page_free = tdev_page_free;
	assert_int_equal(uhmm_device_create(NULL, "x", &ops, UHMM_DEVICE_HOST_BACKED, NULL, &x),
	                 -EINVAL);
	assert_int_equal(uhmm_device_create(h, "x", NULL, UHMM_DEVICE_HOST_BACKED, NULL, &x),
	                 -EINVAL);
	assert_int_equal(uhmm_device_create(h, "x", &ops, UHMM_DEVICE_HOST_BACKED, NULL, NULL),
	                 -EINVAL);
	assert_int_equal(uhmm_device_create(h, "x", &ops, 1u << 5, NULL, &x), -EINVAL);
	/* Not host-backed: both copy ops are required. */
	assert_int_equal(uhmm_device_create(h, "x", &ops, 0, NULL, &x), -EINVAL);
	ops.copy_to_device = tdev_copy_to;
	assert_int_equal(uhmm_device_create(h, "x", &ops, 0, NULL, &x), -EINVAL);
	ops.copy_to_device = NULL;
	ops.copy_from_device = tdev_copy_from;
	assert_int_equal(uhmm_device_create(h, "x", &ops, 0, NULL, &x), -EINVAL);
	ops.copy_to_device = tdev_copy_to;
	assert_int_equal(uhmm_device_create(h, "a-rather-long-device-name-longer-than-31-bytes",
	                                    &ops, 0, NULL, &x), 0);
	assert_true(strlen(uhmm_device_name(x)) <= 31);
	assert_int_equal(strncmp(uhmm_device_name(x), "a-rather-long-device-name", 25), 0);
	assert_null(uhmm_device_priv(x));
	assert_ptr_equal(uhmm_device_context(x), h);

	/* Dummy operations on a device that is not a dummy. */
	assert_int_equal(uhmm_dummy_read(x, p, big, 1, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_write(x, p, big, 1, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_snapshot(x, p, 1, snap), -EINVAL);
	assert_int_equal(uhmm_dummy_set_fail(x, 0), -EINVAL);
	assert_int_equal(uhmm_device_destroy(x), 0);
	assert_int_equal(uhmm_device_destroy(NULL), -EINVAL);

	/* Mirrors. */
	struct uhmm_mirror_ops mops;
	struct uhmm_mirror *mi = NULL, *mi2 = NULL;
	memset(&mops, 0, sizeof(mops));
	mops.invalidate = noop_invalidate;
	assert_int_equal(uhmm_mirror_register(NULL, &mops, NULL, &mi), -EINVAL);
	assert_int_equal(uhmm_mirror_register(d, NULL, NULL, &mi), -EINVAL);
	assert_int_equal(uhmm_mirror_register(d, &mops, NULL, NULL), -EINVAL);
	assert_int_equal(uhmm_mirror_unregister(NULL), -EINVAL);

	struct tdev *t = tdev_create(h, true, 4);
	assert_int_equal(uhmm_mirror_register(t->dev, &mops, t, &mi), 0);
	assert_int_equal(uhmm_mirror_register(t->dev, &mops, t, &mi2), -EEXIST);
	assert_ptr_equal(uhmm_mirror_priv(mi), t);
	struct uhmm_range_entry e[8];
	assert_int_equal(uhmm_range_fault(NULL, p, 1, UHMM_RANGE_READ, e), -EINVAL);
	assert_int_equal(uhmm_range_fault(mi, p, 0, UHMM_RANGE_READ, e), -EINVAL);
	assert_int_equal(uhmm_range_fault(mi, p, 1, UHMM_RANGE_READ, NULL), -EINVAL);
	assert_int_equal(uhmm_range_fault(mi, (char *)p + 1, 1, UHMM_RANGE_READ, e), -EINVAL);
	assert_int_equal(uhmm_range_fault(mi, p, 8, UHMM_RANGE_SNAPSHOT, e), 0);
	for (int i = 0; i < 8; i++)
		assert_true(e[i].flags & UHMM_ENTRY_NONE);
	assert_int_equal(uhmm_mirror_unregister(mi), 0);

	free(big);
	t_close(h);
	tdev_free(t);
}

/* Errors the header documents beyond bad arguments, where a test can
 * provoke them cheaply. */
static void documented_errnos(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device_ops ops;
	struct uhmm_device *devs[33];
	struct uhmm_devmem *m = NULL;

	/* No context to ask: AUTO, the only time it is returned. */
	assert_int_equal(uhmm_fault_mode(NULL), UHMM_FAULT_AUTO);

	/* 32 devices per context; the 33rd is -ENOSPC, for a dummy too. */
	memset(&ops, 0, sizeof(ops));
	for (int i = 0; i < 32; i++)
		assert_int_equal(uhmm_device_create(h, "n", &ops, UHMM_DEVICE_HOST_BACKED, NULL,
		                                    &devs[i]), 0);
	devs[32] = NULL;
	assert_int_equal(uhmm_device_create(h, "n", &ops, UHMM_DEVICE_HOST_BACKED, NULL,
	                                    &devs[32]), -ENOSPC);
	assert_null(devs[32]);
	assert_int_equal(uhmm_dummy_create(h, NULL, &devs[32]), -ENOSPC);
	assert_int_equal(uhmm_device_destroy(devs[31]), 0);

	/* devmem: more than 2^32 pages is -EINVAL; coherent sizes round up to
	 * whole granules (where the kernel offers coherent memory at all). */
	assert_int_equal(uhmm_devmem_add(devs[0], ((size_t)UINT32_MAX + 1) * PS(),
	                                 UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE,
	                                 &m),
	                 -EINVAL);
	int r = uhmm_devmem_add(devs[0], PS(), UHMM_DEVMEM_ALLOW_MIGRATION, &m);
	if (r == 0) {
		assert_int_equal(uhmm_devmem_npages(m), UHMM_COHERENT_GRANULE / PS());
		assert_int_equal(uhmm_devmem_remove(m), 0);
	} else {
		assert_int_equal(r, -EOPNOTSUPP);
	}

	/* Dummy calls on a device that is not a dummy. */
	struct uhmm_dummy_counters c;
	void *p = t_alloc(h, 8);
	assert_int_equal(uhmm_dummy_release(devs[0]), -EINVAL);
	assert_int_equal(uhmm_dummy_counters_get(devs[0], &c), -EINVAL);
	assert_int_equal(uhmm_dummy_check_exclusive(devs[0], p, 1), -EINVAL);
	assert_int_equal(uhmm_dummy_exclusive(devs[0], p, 1), -EINVAL);
	/* ... nor a CUDA device. */
	struct uhmm_cuda_stats cs = UHMM_CUDA_STATS_INIT;
	assert_int_equal(uhmm_cuda_sync(devs[0]), -EINVAL);
	assert_int_equal(uhmm_cuda_sync(NULL), -EINVAL);
	assert_int_equal(uhmm_cuda_stats_get(devs[0], &cs), -EINVAL);
	assert_int_equal(uhmm_cuda_stats_get(NULL, &cs), -EINVAL);
	for (int i = 0; i < 31; i++)
		assert_int_equal(uhmm_device_destroy(devs[i]), 0);

	/* A lost dummy refuses device access. */
	struct uhmm_device *d = t_dummy(h);
	char *buf = malloc(PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_counters_get(d, NULL), -EINVAL);
	assert_int_equal(uhmm_dummy_read(d, p, buf, 1, NULL), 0);
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_LOST), 0);
	assert_int_equal(uhmm_dummy_read(d, p, buf, 1, NULL), -ENODEV);
	assert_int_equal(uhmm_dummy_write(d, p, buf, 1, NULL), -ENODEV);
	free(buf);

	/* More than 64 mappings: -E2BIG (alternate protections split it). */
	enum { NV = 140 };
	char *q = t_mmap(NV);
	for (int i = 0; i < NV; i += 2)
		assert_int_equal(mprotect(q + (size_t)i * PS(), PS(), PROT_READ), 0);
	assert_int_equal(uhmm_range_add(h, q, NV * PS()), -E2BIG);
	/* uhmm_mprotect accepts unmanaged memory (mirrors may map it). */
	assert_int_equal(uhmm_mprotect(h, q, NV * PS(), PROT_READ | PROT_WRITE), 0);
	q[PS()] = 1; /* writable again */
	munmap(q, NV * PS());

	/* A forked child's copy of the context is not live. */
	fill_pages(p, 0, 8, 4);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int ok = uhmm_migrate(h, p, 8 * PS(), NULL, NULL) == -ECHILD &&
		         uhmm_close(h) == -ECHILD;
		_exit(ok ? 0 : 1);
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_pages(p, 0, 8, 4);
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_ONE(bad_open),
		TEST_ONE(bad_alloc_free),
		TEST_ONE(bad_range),
		TEST_ONE(bad_query_migrate),
		TEST_ONE(bad_devices),
		TEST_ONE(documented_errnos),
	};
	return cmocka_run_group_tests_name("badinput", tests, NULL, NULL);
}
