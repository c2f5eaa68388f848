/* SPDX-License-Identifier: MIT */
/* uhmm_close: memory stays usable as ordinary memory; nothing leaks. */
#include <dirent.h>
#include <signal.h>
#include <sys/syscall.h>

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

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(close_device_resident),
		TEST_BOTH(close_custom_devices),
		TEST_BOTH(close_no_leak),
		TEST_BOTH(close_sigbus_handler),
		TEST_BOTH(close_empty),
	};
	return cmocka_run_group_tests_name("close", tests, NULL, NULL);
}
