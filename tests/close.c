/* SPDX-License-Identifier: MIT */
/* uhmm_close: memory stays usable as ordinary memory; nothing leaks. */
#include <dirent.h>
#include <signal.h>
#include <sys/syscall.h>

#include <pthread.h>
#include <stdatomic.h>

#include "testdev.h"

#define N 128

/*
 * Device-resident, system, never-populated and adopted pages: after close
 * all of it is ordinary memory with the right data.
 */
static void close_device_resident(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, N);
	void *q = t_mmap(N);

	fill_pages(p, 0, 3 * N / 4, 1);
	assert_migrate(h, p, N / 2 * PS(), d, N / 2, 0);
	fill_pages(q, 0, N, 2);
	assert_int_equal(uhmm_range_add(h, q, N * PS()), 0);
	assert_migrate(h, q, N * PS(), d, N, 0);
	assert_states(h, q, 0, N, UHMM_STATE_DEVICE, d);

	t_close(h);

	assert_pages(p, 0, 3 * N / 4, 1);
	assert_zero_pages(p, 3 * N / 4, N / 4);
	assert_pages(q, 0, N, 2);
	fill_pages(p, 0, N, 3);
	fill_pages(q, 0, N, 4);
	assert_pages(p, 0, N, 3);
	assert_pages(q, 0, N, 4);
	/* Ordinary memory works with system calls too. */
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	assert_int_equal(write(fds[1], p, PS()), (ssize_t)PS());
	assert_int_equal(read(fds[0], q, PS()), (ssize_t)PS());
	assert_pages(q, 0, 1, 3);
	close(fds[0]);
	close(fds[1]);
	assert_int_equal(munmap(p, N * PS()), 0);
	assert_int_equal(munmap(q, N * PS()), 0);
}

/* Close with custom devices holding pages: evacuated, freed, destroyed once. */
static void close_custom_devices(void **state)
{
	struct uhmm *h = t_open(state);
	struct tdev *t = tdev_create(h, true, 64);
	struct tdev *c = tdev_create(h, false, 64);
	void *p = t_alloc(h, 64);

	fill_pages(p, 0, 64, 5);
	assert_migrate(h, p, 32 * PS(), t->dev, 32, 0);
	assert_migrate(h, page_at(p, 32), 32 * PS(), c->dev, 32, 0);
	t_close(h);

	assert_freed_once(t, 32);
	assert_freed_once(c, 32);
	assert_int_equal(atomic_load(&t->ndestroy), 1);
	assert_int_equal(atomic_load(&c->ndestroy), 1);
	assert_pages(p, 0, 64, 5);
	fill_pages(p, 0, 64, 6);
	assert_pages(p, 0, 64, 6);
	munmap(p, 64 * PS());
	tdev_free(t);
	tdev_free(c);
}

static int count_dir(const char *path)
{
	DIR *dir = opendir(path);
	int n = 0;
	if (!dir)
		return -1;
	while (readdir(dir))
		n++;
	closedir(dir);
	return n;
}

/* Twenty open/use/close cycles leave no descriptor or thread behind. */
static void close_no_leak(void **state)
{
	int fds0 = count_dir("/proc/self/fd");
	int thr0 = count_dir("/proc/self/task");
	assert_true(fds0 > 0 && thr0 > 0);

	for (int r = 0; r < 20; r++) {
		struct uhmm *h = t_open(state);
		struct uhmm_device *d = t_dummy(h);
		void *p = t_alloc(h, 32);
		fill_pages(p, 0, 32, 7);
		assert_migrate(h, p, 32 * PS(), d, 32, 0);
		assert_pages(p, 0, 16, 7);
		t_close(h);
		assert_pages(p, 0, 32, 7);
		assert_int_equal(munmap(p, 32 * PS()), 0);
	}
	assert_int_equal(count_dir("/proc/self/fd"), fds0);
	/* An exited thread may linger in /proc for a moment after its join. */
	for (int i = 0; i < 5000 && count_dir("/proc/self/task") != thr0; i++)
		usleep(1000);
	assert_int_equal(count_dir("/proc/self/task"), thr0);
}

static sigjmp_buf sig_env;
static volatile sig_atomic_t sig_seen;
static void *volatile sig_addr;

static void app_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	sig_seen++;
	sig_addr = si->si_addr;
	siglongjmp(sig_env, 1);
}

/*
 * uhmm's SIGBUS handler chains to the application's for addresses it does
 * not manage, and close puts the previous handler back.
 */
static void close_sigbus_handler(void **state)
{
	struct sigaction app, saved, now;
	memset(&app, 0, sizeof(app));
	app.sa_sigaction = app_sigbus;
	app.sa_flags = SA_SIGINFO;
	sigemptyset(&app.sa_mask);
	assert_int_equal(sigaction(SIGBUS, &app, &saved), 0);

	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_alloc(h, 16);
	fill_pages(p, 0, 16, 8);
	assert_migrate(h, p, 16 * PS(), d, 16, 0);

	/* A real SIGBUS outside managed memory: access past the end of a file. */
	int fd = (int)syscall(SYS_memfd_create, "uhmm-test", 0);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)PS()), 0);
	char *f = mmap(NULL, 2 * PS(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(f != MAP_FAILED);
	sig_seen = 0;
	if (sigsetjmp(sig_env, 1) == 0) {
		*(volatile char *)(f + PS()) = 1;
		fail_msg("no SIGBUS past the end of the file");
	}
	assert_int_equal(sig_seen, 1);
	assert_ptr_equal(sig_addr, f + PS());
	munmap(f, 2 * PS());
	close(fd);

	/* Managed memory still works after the chained signal. */
	assert_pages(p, 0, 16, 8);
	t_close(h);

	assert_int_equal(sigaction(SIGBUS, NULL, &now), 0);
	assert_true(now.sa_sigaction == app_sigbus);
	assert_int_equal(sigaction(SIGBUS, &saved, NULL), 0);
	munmap(p, 16 * PS());
}

/* Close right after open, and with live but idle devices. */
static void close_empty(void **state)
{
	struct uhmm *h = t_open(state);
	t_close(h);
	h = t_open(state);
	(void)t_dummy(h);
	(void)t_dummy(h);
	(void)t_alloc(h, 4);
	t_close(h);
	assert_int_equal(uhmm_close(NULL), -EINVAL);
}

/* ---- close while other threads read device-resident pages ----
 * Contract: uhmm_close brings every page home before it stops serving
 * faults, and a fault that arrives while it runs is still served: readers
 * never see wrong data and never die of SIGBUS, in either mode. */
#define CR_READERS 3
#define CR_PAGES 512

struct close_reader {
	const unsigned char *p;
	unsigned seed;
	atomic_bool *stop;
	atomic_long *bad;
	atomic_ulong *reads;
	unsigned id;
};

static void *close_reader_main(void *arg)
{
	struct close_reader *r = arg;
	size_t i = r->id * 97;
	while (!atomic_load(r->stop)) {
		i = (i + 7) % CR_PAGES;
		/* One word per page: each read of a device page is a fault. */
		size_t w = (i * 13) % words_per_page();
		uint64_t v = ((const volatile uint64_t *)(r->p + i * PS()))[w];
		if (v != pat(r->seed, i, w))
			atomic_fetch_add(r->bad, 1);
		atomic_fetch_add(r->reads, 1);
	}
	return NULL;
}

static void close_while_reading(void **state)
{
	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h);
	void *p = t_mmap(CR_PAGES);
	assert_int_equal(uhmm_range_add(h, p, CR_PAGES * PS()), 0);
	fill_pages(p, 0, CR_PAGES, 61);
	assert_migrate(h, p, CR_PAGES * PS(), d, CR_PAGES, 0);

	atomic_bool stop = false;
	atomic_long bad = 0;
	atomic_ulong reads = 0;
	struct close_reader rd[CR_READERS];
	pthread_t th[CR_READERS];
	for (unsigned i = 0; i < CR_READERS; i++) {
		rd[i] = (struct close_reader){ p, 61, &stop, &bad, &reads, i };
		assert_int_equal(pthread_create(&th[i], NULL, close_reader_main, &rd[i]), 0);
	}
	/* Some pages came home by fault, most are still on the device. */
	while (atomic_load(&reads) < 16)
		usleep(100);
	t_close(h);
	/* The readers go on over ordinary memory now. */
	unsigned long at = atomic_load(&reads);
	while (atomic_load(&reads) < at + 1000)
		usleep(100);
	atomic_store(&stop, true);
	for (unsigned i = 0; i < CR_READERS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	assert_int_equal(atomic_load(&bad), 0);
	assert_pages(p, 0, CR_PAGES, 61);
	munmap(p, CR_PAGES * PS());
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(close_device_resident),
		TEST_BOTH(close_custom_devices),
		TEST_BOTH(close_no_leak),
		TEST_BOTH(close_sigbus_handler),
		TEST_BOTH(close_empty),
		TEST_BOTH(close_while_reading),
	};
	return cmocka_run_group_tests_name("close", tests, NULL, NULL);
}
