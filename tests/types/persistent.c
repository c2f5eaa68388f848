/* SPDX-License-Identifier: MIT */
/*
 * Persistent (DEVICE-only) memory: a file the application maps with
 * uhmm_devmem_map and accesses in place; never migrated; removal refused
 * while mapped; the data outlives uhmm_close and the process (a forked
 * child opens its own context over the same file); a lost device
 * truncates the file, so in-place accesses raise SIGBUS.
 */
#include <fcntl.h>
#include <sys/stat.h>

#include "types.h"

#define NP 256 /* pages of the persistent block */

static void shm_path(char *buf, size_t len, const char *what)
{
	static unsigned seq;
	snprintf(buf, len, "/dev/shm/uhmm-types-%s-%d-%u", what, (int)getpid(), seq++);
	unlink(buf);
}

static struct uhmm_device *t_persistent(struct uhmm *h, const char *path)
{
	struct uhmm_device *d = t_dummy_cls(h, CLS_PERSISTENT, NP * PS(), path);
	struct uhmm_devmem *m = uhmm_dummy_devmem(d);
	assert_non_null(m);
	assert_int_equal(uhmm_devmem_flags(m), CLS_PERSISTENT);
	assert_int_equal(uhmm_devmem_npages(m), NP);
	return d;
}

/* The child: its own context and device over the same file. */
static int child_check(const char *path, unsigned seed, unsigned new_seed)
{
	struct uhmm *h = NULL;
	struct uhmm_device *d = NULL;
	struct uhmm_dummy_options o = UHMM_DUMMY_OPTIONS_INIT;
	void *q = NULL;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.devmem_flags = CLS_PERSISTENT;
	o.capacity = NP * PS();
	o.path = path;
	if (uhmm_open(NULL, &h))
		return 20;
	if (uhmm_dummy_create(h, &o, &d))
		return 21;
	struct uhmm_devmem *m = uhmm_dummy_devmem(d);
	if (uhmm_devmem_map(m, 0, NP * PS(), PROT_READ | PROT_WRITE, &q))
		return 22;
	if (check_pages(q, 0, NP, seed) != -1)
		return 23;
	struct uhmm_migrate_result r = { 0, 0 };
	if (uhmm_migrate(h, q, NP * PS(), NULL, &r) || r.migrated || r.skipped != NP)
		return 24;
	fill_pages(q, 0, NP, new_seed);
	if (uhmm_devmem_unmap(m, q, NP * PS()))
		return 25;
	if (uhmm_close(h))
		return 26;
	return 0;
}

/*
 * Data written through a persistent mapping survives uhmm_close (the
 * mapping even stays valid) and is seen by another process that opens
 * its own context over the same file; what that process writes is seen
 * by a new context here.
 */
static void persistent_survives_close(void **state)
{
	char path[96];
	shm_path(path, sizeof(path), "persist");
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_persistent(h, path);
	struct uhmm_devmem *m = uhmm_dummy_devmem(d);
	void *q = NULL;
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	assert_int_equal((size_t)st.st_size, NP * PS());
	assert_int_equal(uhmm_devmem_map(m, 0, NP * PS(), PROT_READ | PROT_WRITE, &q), 0);
	fill_pages(q, 0, NP, 60);
	assert_migrate(h, q, NP * PS(), d, 0, NP);
	/* Closed while still mapped: the mapping is the application's. */
	t_close(h);
	assert_pages(q, 0, NP, 60);
	assert_int_equal(munmap(q, NP * PS()), 0);

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(30);
		_exit(child_check(path, 60, 61));
	}
	assert_int_equal(t_wait_child(pid), 0);

	/* A new context and device over the file: the child's data. */
	h = t_open(state);
	d = t_persistent(h, path);
	m = uhmm_dummy_devmem(d);
	assert_int_equal(uhmm_devmem_map(m, 0, NP * PS(), PROT_READ, &q), 0);
	assert_pages(q, 0, NP, 61);
	assert_int_equal(uhmm_devmem_unmap(m, q, NP * PS()), 0);
	/* Removing the device leaves the file's data alone. */
	assert_int_equal(uhmm_device_destroy(d), 0);
	t_close(h);

	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	void *f = mmap(NULL, NP * PS(), PROT_READ, MAP_SHARED, fd, 0);
	assert_true(f != MAP_FAILED);
	assert_pages(f, 0, NP, 61);
	munmap(f, NP * PS());
	close(fd);
	assert_int_equal(unlink(path), 0);
}

/* Removal is refused while mapped (every mapping), allowed after. */
static void persistent_remove_busy(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *hd = t_hostdev(h);
	struct uhmm_devmem *m = NULL;
	void *a = NULL, *b = NULL, *x = NULL;

	assert_int_equal(uhmm_devmem_add(hd, 16 * PS(), CLS_PERSISTENT, &m), 0);
	assert_int_equal(uhmm_devmem_map(m, 0, 8 * PS(), PROT_READ | PROT_WRITE, &a), 0);
	assert_int_equal(uhmm_devmem_map(m, 8 * PS(), 8 * PS(), PROT_READ | PROT_WRITE, &b), 0);
	fill_pages(a, 0, 8, 70);
	fill_pages(b, 0, 8, 71);
	assert_int_equal(uhmm_devmem_remove(m), -EBUSY);
	/* Not a whole mapping, or not this block's: -EINVAL, still mapped. */
	assert_int_equal(uhmm_devmem_unmap(m, a, 4 * PS()), -EINVAL);
	assert_int_equal(uhmm_devmem_unmap(m, page_at(a, 1), 7 * PS()), -EINVAL);
	assert_int_equal(uhmm_devmem_unmap(m, a, 16 * PS()), -EINVAL);
	assert_int_equal(uhmm_devmem_unmap(NULL, a, 8 * PS()), -EINVAL);
	assert_pages(a, 0, 8, 70);
	assert_int_equal(uhmm_devmem_unmap(m, a, 8 * PS()), 0);
	assert_int_equal(uhmm_devmem_unmap(m, a, 8 * PS()), -EINVAL); /* already gone */
	assert_int_equal(uhmm_devmem_remove(m), -EBUSY);
	assert_pages(b, 0, 8, 71);
	assert_int_equal(uhmm_devmem_unmap(m, b, 8 * PS()), 0);
	assert_int_equal(uhmm_devmem_remove(m), 0);

	/* Map arguments. */
	struct uhmm_devmem *c = NULL, *pv = NULL;
	assert_int_equal(uhmm_devmem_add(hd, 16 * PS(), CLS_PERSISTENT, &m), 0);
	assert_int_equal(uhmm_devmem_add(hd, 16 * PS(), CLS_COHERENT, &c), 0);
	assert_int_equal(uhmm_devmem_add(hd, 16 * PS(), CLS_PRIVATE, &pv), 0);
	assert_int_equal(uhmm_devmem_map(m, 0, 0, PROT_READ, &x), -EINVAL);
	assert_int_equal(uhmm_devmem_map(m, 1, PS(), PROT_READ, &x), -EINVAL);
	assert_int_equal(uhmm_devmem_map(m, 0, PS() + 1, PROT_READ, &x), -EINVAL);
	assert_int_equal(uhmm_devmem_map(m, 0, 17 * PS(), PROT_READ, &x), -EINVAL);
	assert_int_equal(uhmm_devmem_map(m, 16 * PS(), PS(), PROT_READ, &x), -EINVAL);
	assert_int_equal(uhmm_devmem_map(m, 8 * PS(), SIZE_MAX - 4 * PS() + 1, PROT_READ, &x),
	                 -EINVAL);
	assert_int_equal(uhmm_devmem_map(m, 0, PS(), PROT_READ, NULL), -EINVAL);
	assert_int_equal(uhmm_devmem_map(NULL, 0, PS(), PROT_READ, &x), -EINVAL);
	assert_int_equal(uhmm_devmem_map(c, 0, PS(), PROT_READ, &x), -EOPNOTSUPP);
	assert_int_equal(uhmm_devmem_map(pv, 0, PS(), PROT_READ, &x), -EOPNOTSUPP);
	/* The last page, read-only. */
	assert_int_equal(uhmm_devmem_map(m, 15 * PS(), PS(), PROT_READ, &x), 0);
	assert_int_equal(uhmm_devmem_unmap(m, x, PS()), 0);

	/* The dummy device: uhmm_devmem_remove of its block, and destroy. */
	char path[96];
	shm_path(path, sizeof(path), "busy");
	struct uhmm_device *d = t_persistent(h, path);
	struct uhmm_devmem *dm = uhmm_dummy_devmem(d);
	assert_int_equal(uhmm_devmem_map(dm, 0, NP * PS(), PROT_READ | PROT_WRITE, &a), 0);
	fill_pages(a, 0, NP, 72);
	assert_int_equal(uhmm_devmem_remove(dm), -EBUSY);
	assert_pages(a, 0, NP, 72);
	assert_int_equal(uhmm_devmem_unmap(dm, a, NP * PS()), 0);
	assert_int_equal(uhmm_devmem_remove(dm), 0);
	assert_int_equal(uhmm_device_destroy(d), 0);
	assert_int_equal(unlink(path), 0);

	assert_int_equal(uhmm_device_destroy(hd), 0);
	t_close(h);
}

/*
 * Persistent pages inside a migration request next to managed memory:
 * the managed pages move, the persistent ones are skipped and counted.
 * A device fault on persistent memory reads it in place.
 */
static void persistent_skipped_in_migration(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_persistent(h, NULL), *priv = t_dummy(h);
	struct uhmm_devmem *m = uhmm_dummy_devmem(d);
	void *q = NULL;
	uint8_t snap[8];

	assert_int_equal(uhmm_devmem_map(m, 0, 8 * PS(), PROT_READ | PROT_WRITE, &q), 0);
	fill_pages(q, 0, 8, 80);
	uint64_t skipped0 = t_stats(h).pages_skipped, f0 = t_stats(h).cpu_faults;
	assert_migrate(h, q, 8 * PS(), priv, 0, 8);
	assert_migrate(h, page_at(q, 2), 3 * PS(), NULL, 0, 3);
	assert_int_equal(t_stats(h).pages_skipped, skipped0 + 11);
	assert_states(h, q, 0, 8, UHMM_STATE_DEVICE_COHERENT, d);

	/* Devices reach it in place through their mirrors. */
	void *buf = malloc(8 * PS());
	assert_non_null(buf);
	assert_int_equal(uhmm_dummy_read(priv, q, buf, 8, NULL), 0);
	assert_buf(buf, 0, 8, 80);
	fill_buf(buf, 0, 8, 81);
	assert_int_equal(uhmm_dummy_write(d, q, buf, 8, NULL), 0);
	assert_pages(q, 0, 8, 81);
	assert_int_equal(uhmm_dummy_snapshot(d, q, 8, snap), 0);
	for (int i = 0; i < 8; i++)
		assert_true(snap[i] & UHMM_SNAP_WRITE);
	assert_states(h, q, 0, 8, UHMM_STATE_DEVICE_COHERENT, d);
	assert_int_equal(t_stats(h).cpu_faults, f0);
	free(buf);

	/* Not managed memory: uhmm_free and uhmm_range_add refuse it. */
	assert_int_equal(uhmm_free(h, q, 8 * PS()), -EINVAL);
	assert_int_not_equal(uhmm_range_add(h, q, 8 * PS()), 0);
	assert_int_equal(uhmm_devmem_unmap(m, q, 8 * PS()), 0);
	/* Unmapped: no longer known to uhmm. */
	struct uhmm_page_info inf;
	assert_int_equal(uhmm_query(h, q, 1, &inf), -ENOENT);
	t_close(h);
}

/* A lost device truncates the file: in-place accesses raise SIGBUS. */
static void persistent_lost(void **state)
{
	struct sigaction saved;
	t_catch(SIGBUS, &saved);
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_persistent(h, NULL);
	struct uhmm_devmem *m = uhmm_dummy_devmem(d);
	void *q = NULL;

	assert_int_equal(uhmm_devmem_map(m, 0, 8 * PS(), PROT_READ | PROT_WRITE, &q), 0);
	fill_pages(q, 0, 8, 90);
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_LOST), 0);
	t_nsig = 0;
	assert_true(t_read_faults(page_at(q, 0)));
	assert_true(t_write_faults(page_at(q, 7), 1));
	assert_int_equal(t_nsig, 2);
	assert_int_equal(uhmm_devmem_unmap(m, q, 8 * PS()), 0);
	assert_int_equal(uhmm_devmem_map(m, 0, PS(), PROT_READ, &q), -EBUSY);
	assert_int_equal(uhmm_device_destroy(d), 0);
	t_close(h);
	assert_int_equal(sigaction(SIGBUS, &saved, NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_ONE(persistent_survives_close),
		TEST_ONE(persistent_remove_busy),
		TEST_ONE(persistent_skipped_in_migration),
		TEST_BOTH(persistent_lost),
	};
	return cmocka_run_group_tests_name("types_persistent", tests, NULL, NULL);
}
