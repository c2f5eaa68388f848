/* SPDX-License-Identifier: MIT */
/*
 * The flag table of the README (Device memory types), row by row, on the three kinds of device:
 * the dummy device (uhmm_dummy_options.devmem_flags), a custom HOST_BACKED
 * device (uhmm_devmem_add) and a custom copy device (not host-backed: only
 * private memory, the addressable classes are -EOPNOTSUPP).  For every
 * accepted combination the test checks how the CPU reaches the memory
 * (by a fault that brings the page home, or in place with no fault) and
 * whether migration moves pages or skips them.
 *
 *   flags                      class        CPU access       migration
 *   DEVICE|ALLOW_MIG|UNADDR    private      fault, home      yes
 *   DEVICE|ALLOW_MIG           coherent     in place         yes, whole 2 MiB granules, explicit back
 *   DEVICE                     persistent   in place (map)   never: skipped
 *   UNADDR without ALLOW_MIG   -EINVAL
 *   unknown bits               -EINVAL
 */
#include <sys/stat.h>
#include <sys/statfs.h>
#include <fcntl.h>
#include <linux/magic.h>

#include "types.h"

enum cls { C_PRIVATE, C_COHERENT, C_PERSISTENT, C_EINVAL, C_EOPNOTSUPP };
enum kind { K_DUMMY, K_HOST, K_COPY };

static const char *cls_name(enum cls c)
{
	static const char *n[] = { "private", "coherent", "persistent", "-EINVAL", "-EOPNOTSUPP" };
	return n[c];
}

/* Every combination of the three flags, plus unknown bits. */
static const unsigned all_flags[] = { 0, 1, 2, 3, 4, 5, 6, 7, 1u << 3, 1u << 31, 7u | (1u << 4) };
#define NFLAGS (sizeof(all_flags) / sizeof(all_flags[0]))

static enum cls expected(unsigned f, enum kind k)
{
	if (f & ~(UHMM_DEVMEM_DEVICE | UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE))
		return C_EINVAL;
	if (k == K_DUMMY && f == 0)
		return C_PRIVATE; /* 0 = the default class */
	bool un = f & UHMM_DEVMEM_UNADDRESSABLE, am = f & UHMM_DEVMEM_ALLOW_MIGRATION;
	if (un && !am)
		return C_EINVAL; /* the data would be unreachable */
	if (un)
		return C_PRIVATE;
	if (k == K_COPY)
		return C_EOPNOTSUPP; /* uhmm cannot map a copy device's memory */
	return am ? C_COHERENT : C_PERSISTENT;
}

static int expected_rc(enum cls c)
{
	return c == C_EINVAL ? -EINVAL : c == C_EOPNOTSUPP ? -EOPNOTSUPP : 0;
}

/* ---- what each class does ---- */

/* Private: migration moves every page; a CPU access faults it home. */
static void exercise_private(struct uhmm *h, struct uhmm_device *d)
{
	const size_t n = 64;
	void *p = t_alloc(h, n);
	fill_pages(p, 0, n, 11);
	assert_migrate(h, p, n * PS(), d, n, 0);
	assert_states(h, p, 0, n, UHMM_STATE_DEVICE, d);
	uint64_t f0 = t_stats(h).cpu_faults;
	assert_pages(p, 0, n, 11);
	assert_true(t_stats(h).cpu_faults > f0);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	assert_int_equal(uhmm_free(h, p, n * PS()), 0);
}

/*
 * Coherent: only whole aligned granules migrate; the CPU then reads and
 * writes device memory in place with no fault; migration back is
 * explicit and brings whole granules.  m: the block the granule lands in.
 */
static void exercise_coherent(struct uhmm *h, struct uhmm_device *d, struct uhmm_devmem *m,
                              bool dummy)
{
	const size_t g = GP(), n = 2 * g;
	void *p = t_alloc(h, n);
	assert_int_equal((uintptr_t)p % UHMM_COHERENT_GRANULE, 0);
	fill_pages(p, 0, n, 21);

	/* No whole granule inside: every page skipped. */
	assert_migrate(h, page_at(p, 1), (g - 1) * PS(), d, 0, g - 1);
	assert_migrate(h, page_at(p, 1), (n - 2) * PS(), d, 0, n - 2);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);

	/* One whole granule and 4 pages of the next: the 4 are skipped. */
	assert_migrate(h, p, (g + 4) * PS(), d, g, 4);
	assert_states(h, p, 0, g, UHMM_STATE_DEVICE_COHERENT, d);
	assert_states(h, p, g, g, UHMM_STATE_SYSTEM, NULL);
	/* Again: already there counts as migrated. */
	assert_migrate(h, p, g * PS(), d, g, 0);

	uint64_t f0 = t_stats(h).cpu_faults;
	assert_pages(p, 0, n, 21);
	assert_true(t_devmem_holds(m, 2 * g, page_at(p, 3)));
	fill_pages(p, 0, g, 22); /* written in place */
	assert_pages(p, 0, g, 22);
	assert_true(t_devmem_holds(m, 2 * g, page_at(p, 7)));
	if (dummy) {
		void *buf = malloc(2 * PS());
		assert_non_null(buf);
		assert_int_equal(uhmm_dummy_read(d, page_at(p, 9), buf, 2, NULL), 0);
		assert_buf(buf, 9, 2, 22);
		free(buf);
	}
	assert_int_equal(t_stats(h).cpu_faults, f0);
	assert_states(h, p, 0, g, UHMM_STATE_DEVICE_COHERENT, d);

	/* Explicit migration back of one page brings its whole granule. */
	assert_migrate(h, page_at(p, 8), PS(), NULL, 1, 0);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, g, 22);
	assert_pages(p, g, g, 21);
	assert_int_equal(t_stats(h).cpu_faults, f0);
	assert_int_equal(uhmm_devmem_used(m), 0);
	assert_int_equal(uhmm_free(h, p, n * PS()), 0);
}

/*
 * Persistent: the application maps the memory itself; it is accessed in
 * place, reported DEVICE_COHERENT, and every migration skips it (as it
 * skips managed pages sent to a device that has only persistent memory).
 */
static void exercise_persistent(struct uhmm *h, struct uhmm_device *d, struct uhmm_devmem *m)
{
	const size_t n = 16;
	struct uhmm_device *other = t_dummy(h);
	void *q = NULL, *q2 = NULL;

	assert_true(uhmm_devmem_npages(m) >= n);
	assert_int_equal(uhmm_devmem_map(m, 0, n * PS(), PROT_READ | PROT_WRITE, &q), 0);
	assert_non_null(q);
	uint64_t f0 = t_stats(h).cpu_faults;
	fill_pages(q, 0, n, 31);
	assert_pages(q, 0, n, 31);
	assert_states(h, q, 0, n, UHMM_STATE_DEVICE_COHERENT, d);
	assert_memory_equal(uhmm_devmem_host_addr(m, 2), page_at(q, 2), PS());

	assert_migrate(h, q, n * PS(), d, 0, n);
	assert_migrate(h, q, n * PS(), NULL, 0, n);
	assert_migrate(h, q, n * PS(), other, 0, n);
	assert_states(h, q, 0, n, UHMM_STATE_DEVICE_COHERENT, d);
	assert_pages(q, 0, n, 31);

	/* A second mapping at an offset sees the same memory. */
	assert_int_equal(uhmm_devmem_map(m, 4 * PS(), 4 * PS(), PROT_READ, &q2), 0);
	assert_memory_equal(q2, page_at(q, 4), 4 * PS());
	assert_int_equal(uhmm_devmem_unmap(m, q2, 4 * PS()), 0);
	assert_int_equal(t_stats(h).cpu_faults, f0);

	/* Managed memory sent to this device stays home. */
	void *p = t_alloc(h, n);
	fill_pages(p, 0, n, 32);
	assert_migrate(h, p, n * PS(), d, 0, n);
	assert_states(h, p, 0, n, UHMM_STATE_SYSTEM, NULL);
	assert_pages(p, 0, n, 32);
	assert_int_equal(uhmm_free(h, p, n * PS()), 0);

	assert_int_equal(uhmm_devmem_unmap(m, q, n * PS()), 0);
	assert_int_equal(uhmm_device_destroy(other), 0);
}

/* ---- the table on each kind of device ---- */

static void table_dummy(void **state)
{
	struct uhmm *h = t_open(state);
	for (size_t i = 0; i < NFLAGS; i++) {
		unsigned f = all_flags[i];
		enum cls c = expected(f, K_DUMMY);
		struct uhmm_dummy_options o = UHMM_DUMMY_OPTIONS_INIT;
		struct uhmm_device *d = NULL;
		memset(&o, 0, sizeof(o));
		o.sz = sizeof(o);
		o.devmem_flags = f;
		int rc = uhmm_dummy_create(h, &o, &d);
		if (rc != expected_rc(c))
			print_error("dummy devmem_flags %#x: rc %d, expected %s\n", f, rc, cls_name(c));
		assert_int_equal(rc, expected_rc(c));
		if (rc)
			continue;
		struct uhmm_devmem *m = uhmm_dummy_devmem(d);
		switch (c) {
		case C_PRIVATE:
			exercise_private(h, d);
			break;
		case C_COHERENT:
			assert_non_null(m);
			assert_int_equal(uhmm_devmem_flags(m), CLS_COHERENT);
			exercise_coherent(h, d, m, true);
			break;
		case C_PERSISTENT:
			assert_non_null(m);
			assert_int_equal(uhmm_devmem_flags(m), CLS_PERSISTENT);
			assert_int_equal(uhmm_devmem_npages(m) * PS(), UHMM_DUMMY_CHUNK);
			exercise_persistent(h, d, m);
			break;
		default:
			fail();
		}
		assert_int_equal(uhmm_device_destroy(d), 0);
	}
	t_close(h);
}

static void table_host_backed(void **state)
{
	struct uhmm *h = t_open(state);
	const size_t size = 2 * UHMM_COHERENT_GRANULE;
	for (size_t i = 0; i < NFLAGS; i++) {
		unsigned f = all_flags[i];
		enum cls c = expected(f, K_HOST);
		struct uhmm_device *d = t_hostdev(h);
		struct uhmm_devmem *m = NULL;
		int rc = uhmm_devmem_add(d, size, f, &m);
		if (rc != expected_rc(c))
			print_error("host-backed devmem flags %#x: rc %d, expected %s\n", f, rc,
			            cls_name(c));
		assert_int_equal(rc, expected_rc(c));
		if (rc == 0) {
			assert_non_null(m);
			assert_int_equal(uhmm_devmem_flags(m), f | UHMM_DEVMEM_DEVICE);
			assert_int_equal(uhmm_devmem_npages(m) * PS(), size);
			assert_ptr_equal(uhmm_devmem_device(m), d);
			switch (c) {
			case C_PRIVATE: exercise_private(h, d); break;
			case C_COHERENT: exercise_coherent(h, d, m, false); break;
			case C_PERSISTENT: exercise_persistent(h, d, m); break;
			default: fail();
			}
			assert_int_equal(uhmm_devmem_remove(m), 0);
		}
		assert_int_equal(uhmm_device_destroy(d), 0);
	}

	/* Coherent blocks are whole granules: the size is rounded up. */
	struct uhmm_device *d = t_hostdev(h);
	struct uhmm_devmem *m = NULL;
	assert_int_equal(uhmm_devmem_add(d, 16 * PS(), CLS_COHERENT, &m), 0);
	assert_int_equal(uhmm_devmem_npages(m), GP());
	exercise_coherent(h, d, m, false);
	/* Persistent and private blocks keep their size. */
	struct uhmm_devmem *mp = NULL, *mq = NULL;
	assert_int_equal(uhmm_devmem_add(d, 16 * PS(), CLS_PERSISTENT, &mp), 0);
	assert_int_equal(uhmm_devmem_npages(mp), 16);
	assert_int_equal(uhmm_devmem_add(d, 16 * PS(), CLS_PRIVATE, &mq), 0);
	assert_int_equal(uhmm_devmem_npages(mq), 16);
	/* Bad sizes. */
	assert_int_equal(uhmm_devmem_add(d, 0, CLS_COHERENT, &m), -EINVAL);
	assert_int_equal(uhmm_devmem_add(d, PS() + 1, CLS_PERSISTENT, &m), -EINVAL);
	assert_int_equal(uhmm_devmem_add(d, PS(), CLS_PERSISTENT, NULL), -EINVAL);
	assert_int_equal(uhmm_device_destroy(d), 0);
	t_close(h);
}

static void table_copy_device(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, false, 64);
	for (size_t i = 0; i < NFLAGS; i++) {
		unsigned f = all_flags[i];
		enum cls c = expected(f, K_COPY);
		struct uhmm_devmem *m = NULL;
		int rc = uhmm_devmem_add(t->dev, 64 * PS(), f, &m);
		if (rc != expected_rc(c))
			print_error("copy device devmem flags %#x: rc %d, expected %s\n", f, rc,
			            cls_name(c));
		assert_int_equal(rc, expected_rc(c));
		if (rc == 0) {
			assert_int_equal(uhmm_devmem_flags(m), f | UHMM_DEVMEM_DEVICE);
			assert_int_equal(uhmm_devmem_remove(m), 0);
		}
	}
	char path[64];
	snprintf(path, sizeof(path), "/dev/shm/uhmm-types-copy-%d", (int)getpid());
	struct uhmm_devmem *m = NULL;
	assert_int_equal(uhmm_devmem_add_file(t->dev, path, 64 * PS(), CLS_COHERENT, &m),
	                 -EOPNOTSUPP);
	assert_int_equal(uhmm_devmem_add_file(t->dev, path, 64 * PS(), CLS_PERSISTENT, &m),
	                 -EOPNOTSUPP);
	unlink(path);
	/* Its private memory works as usual (t->m is the only block left). */
	exercise_private(h, t->dev);
	assert_int_equal(atomic_load(&t->bad), 0);
	assert_true(atomic_load(&t->to_pages) >= 64);
	t_close(h);
	tdev_free(t);
}

static bool on_tmpfs(const char *dir)
{
	struct statfs sf;
	return statfs(dir, &sf) == 0 && sf.f_type == TMPFS_MAGIC;
}

/* Named backing files: uhmm_devmem_add_file and uhmm_dummy_options.path. */
static void table_files(void **state)
{
	struct uhmm *h = t_open(state);
	char shm[96], other[128], cwd[64];
	snprintf(shm, sizeof(shm), "/dev/shm/uhmm-types-file-%d", (int)getpid());
	unlink(shm);
	struct uhmm_device *d = t_hostdev(h);
	struct uhmm_devmem *m = NULL;
	struct stat st;

	assert_int_equal(uhmm_devmem_add_file(d, NULL, UHMM_COHERENT_GRANULE, CLS_COHERENT, &m),
	                 -EINVAL);
	assert_int_equal(uhmm_devmem_add_file(d, shm, UHMM_COHERENT_GRANULE, CLS_PRIVATE, &m),
	                 -EOPNOTSUPP);
	assert_int_equal(uhmm_devmem_add_file(d, shm, UHMM_COHERENT_GRANULE,
	                                      UHMM_DEVMEM_UNADDRESSABLE, &m), -EINVAL);
	assert_int_equal(uhmm_devmem_add_file(d, "/nonexistent-dir/x", UHMM_COHERENT_GRANULE,
	                                      CLS_PERSISTENT, &m), -ENOENT);

	/* Coherent on tmpfs: the file is created at the block's size. */
	assert_int_equal(uhmm_devmem_add_file(d, shm, UHMM_COHERENT_GRANULE, CLS_COHERENT, &m), 0);
	assert_int_equal(stat(shm, &st), 0);
	assert_int_equal((size_t)st.st_size, UHMM_COHERENT_GRANULE);
	exercise_coherent(h, d, m, false);
	assert_int_equal(uhmm_devmem_remove(m), 0);
	unlink(shm);

	/* Persistent on tmpfs. */
	assert_int_equal(uhmm_devmem_add_file(d, shm, 64 * PS(), CLS_PERSISTENT, &m), 0);
	exercise_persistent(h, d, m);
	assert_int_equal(uhmm_devmem_remove(m), 0);
	unlink(shm);

	/* Off tmpfs: persistent works, coherent cannot be write-protected. */
	snprintf(cwd, sizeof(cwd), "%s", "/var/tmp");
	if (on_tmpfs(cwd) || access(cwd, W_OK) != 0)
		snprintf(cwd, sizeof(cwd), "%s", ".");
	if (!on_tmpfs(cwd) && access(cwd, W_OK) == 0) {
		snprintf(other, sizeof(other), "%s/uhmm-types-file-%d", cwd, (int)getpid());
		unlink(other);
		assert_int_equal(uhmm_devmem_add_file(d, other, UHMM_COHERENT_GRANULE, CLS_COHERENT,
		                                      &m), -EOPNOTSUPP);
		assert_int_equal(uhmm_devmem_add_file(d, other, 64 * PS(), CLS_PERSISTENT, &m), 0);
		exercise_persistent(h, d, m);
		assert_int_equal(uhmm_devmem_remove(m), 0);
		unlink(other);
	} else {
		print_message("  (no writable non-tmpfs directory: coherent-off-tmpfs check skipped)\n");
	}
	assert_int_equal(uhmm_device_destroy(d), 0);

	/* The dummy device with a path. */
	struct uhmm_dummy_options o = UHMM_DUMMY_OPTIONS_INIT;
	struct uhmm_device *dd = NULL;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.path = shm;
	o.devmem_flags = CLS_PRIVATE;
	assert_int_equal(uhmm_dummy_create(h, &o, &dd), -EINVAL);
	o.devmem_flags = CLS_COHERENT;
	assert_int_equal(uhmm_dummy_create(h, &o, &dd), 0);
	exercise_coherent(h, dd, uhmm_dummy_devmem(dd), true);
	assert_int_equal(uhmm_device_destroy(dd), 0);
	unlink(shm);
	o.devmem_flags = CLS_PERSISTENT;
	o.capacity = 64 * PS();
	assert_int_equal(uhmm_dummy_create(h, &o, &dd), 0);
	assert_int_equal(uhmm_devmem_npages(uhmm_dummy_devmem(dd)), 64);
	exercise_persistent(h, dd, uhmm_dummy_devmem(dd));
	assert_int_equal(uhmm_device_destroy(dd), 0);
	unlink(shm);
	t_close(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(table_dummy),
		TEST_BOTH(table_host_backed),
		TEST_BOTH(table_copy_device),
		TEST_ONE(table_files),
	};
	return cmocka_run_group_tests_name("types_table", tests, NULL, NULL);
}
