/* SPDX-License-Identifier: MIT */
/*
 * uhmm_evacuate_all: every device-resident page comes home, callable from
 * a fatal-signal handler so that a core dump (or a debugger attached
 * afterwards) sees the data instead of zeros.
 *  - evacuate_signal: called from a signal handler the test raises itself
 *    (outside any uhmm call): pages on two devices come home, the others
 *    are left as they are, data intact;
 *  - evacuate_crash: a forked child with its own context crashes with
 *    SIGSEGV after migrating; its SIGSEGV handler brings the pages home,
 *    checks them (resident per mincore before it reads them, and their
 *    data) and reports through a pipe; the child then dies of the SIGSEGV.
 */
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "common.h"

#define N 64

static struct uhmm *g_h;
static volatile sig_atomic_t g_rc = 1;

static void on_usr1(int sig)
{
	(void)sig;
	g_rc = uhmm_evacuate_all(g_h);
}

static void evacuate_signal(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device *d = t_dummy(h), *d2 = t_dummy(h);
	void *p = t_alloc(h, N);
	/* 0..N-9 written; the last 8 never touched. */
	fill_pages(p, 0, N - 8, 1);
	assert_migrate(h, p, N / 2 * PS(), d, N / 2, 0);
	assert_migrate(h, page_at(p, N / 2), 8 * PS(), d2, 8, 0);
	struct uhmm_stats s0 = t_stats(h);

	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
	g_h = h;
	g_rc = 1;
	assert_int_equal(raise(SIGUSR1), 0);
	assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
	assert_int_equal(g_rc, 0);

	/* Home before anything touched them. */
	assert_states(h, p, 0, N - 8, UHMM_STATE_SYSTEM, NULL);
	assert_int_equal(t_stats(h).pages_to_system, s0.pages_to_system + N / 2 + 8);
	assert_int_equal(uhmm_devmem_used(uhmm_dummy_devmem(d)), 0);
	assert_int_equal(uhmm_devmem_used(uhmm_dummy_devmem(d2)), 0);
	assert_pages(p, 0, N - 8, 1);
	assert_zero_pages(p, N - 8, 8);
	/* Nothing on a device: a no-op. */
	assert_int_equal(uhmm_evacuate_all(h), 0);
	assert_int_equal(uhmm_evacuate_all(NULL), -EINVAL);
	t_close(h);
}

struct report {
	int rc;
	int resident;   /* pages mincore saw resident after the call */
	int bad;        /* pages whose data was wrong */
};

static int g_pipe = -1;
static void *g_p;
static size_t g_ps;

static void on_segv(int sig)
{
	struct report rep = { 0, 0, 0 };
	rep.rc = uhmm_evacuate_all(g_h);
	unsigned char vec[N];
	if (mincore(g_p, N * g_ps, vec) == 0)
		for (size_t i = 0; i < N; i++)
			rep.resident += vec[i] & 1;
	size_t wpp = g_ps / sizeof(uint64_t);
	for (size_t i = 0; i < N; i++) {
		const volatile uint64_t *w = (const volatile uint64_t *)((char *)g_p + i * g_ps);
		for (size_t j = 0; j < wpp; j++)
			if (w[j] != pat(3, i, j)) {
				rep.bad++;
				break;
			}
	}
	(void)!write(g_pipe, &rep, sizeof(rep));
	signal(sig, SIG_DFL); /* returning re-runs the access: the default action */
}

static void evacuate_crash(void **state)
{
	SKIP_UNDER_TSAN_FORK();
	enum uhmm_fault_mode mode = state_mode(state);
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(20);
		struct rlimit nocore = { 0, 0 };
		setrlimit(RLIMIT_CORE, &nocore); /* no core file left behind */
		close(fds[0]);
		struct uhmm_options o = UHMM_OPTIONS_INIT;
		memset(&o, 0, sizeof(o));
		o.sz = sizeof(o);
		o.fault_mode = mode;
		struct uhmm_device *d = NULL;
		if (uhmm_open(&o, &g_h) || uhmm_dummy_create(g_h, NULL, &d) ||
		    uhmm_alloc(g_h, N * PS(), &g_p))
			_exit(10);
		g_ps = PS();
		g_pipe = fds[1];
		fill_pages(g_p, 0, N, 3);
		struct uhmm_migrate_result r;
		if (uhmm_migrate(g_h, g_p, N * PS(), d, &r) || r.migrated != N)
			_exit(11);
		unsigned char vec[N];
		if (mincore(g_p, N * PS(), vec))
			_exit(12);
		for (size_t i = 0; i < N; i++)
			if (vec[i] & 1)
				_exit(13); /* on the device: not mapped */
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_segv;
		sigemptyset(&sa.sa_mask);
		sigaction(SIGSEGV, &sa, NULL);
		/* The crash: a store to inaccessible memory (not a null
		 * pointer, which UBSan would report first). */
		volatile int *bad = mmap(NULL, PS(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if ((void *)bad == MAP_FAILED)
			_exit(15);
		*bad = 1;
		_exit(14);
	}
	close(fds[1]);
	struct report rep;
	memset(&rep, 0xff, sizeof(rep));
	ssize_t got = read(fds[0], &rep, sizeof(rep));
	close(fds[0]);
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (!WIFSIGNALED(st))
		print_error("child exited with status %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGSEGV);
	assert_int_equal(got, (ssize_t)sizeof(rep));
	assert_int_equal(rep.rc, 0);
	assert_int_equal(rep.resident, N);
	assert_int_equal(rep.bad, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(evacuate_signal),
		TEST_BOTH(evacuate_crash),
	};
	return cmocka_run_group_tests_name("evacuate", tests, NULL, NULL);
}
