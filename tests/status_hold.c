/* SPDX-License-Identifier: MIT */
/*
 * For tests/status.sh: a process holding a context open for `uhmm stat`
 * and `uhmm top` to look at.  Two dummy devices; 1024 pages migrated to
 * the first, then page 0 read back on the CPU: the range has 1023 pages on
 * the device and 1 in system memory.  Prints "ready PID" once that is
 * done, then sleeps until SIGTERM, closes the context (which removes its
 * segment) and exits 0.  Any failure: exit 1.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "uhmm.h"

#define NPAGES 1024

static volatile sig_atomic_t g_stop;
static void on_term(int sig) { (void)sig; g_stop = 1; }

#define CHECK(call)                                                              \
	do {                                                                     \
		int rc_ = (call);                                                \
		if (rc_ < 0) {                                                   \
			fprintf(stderr, "%s: %s\n", #call, strerror(-rc_));      \
			return 1;                                                \
		}                                                                \
	} while (0)

int main(void)
{
	struct uhmm *h;
	struct uhmm_device *a, *b;
	char *p;
	size_t len = NPAGES * 4096UL;
	sigset_t set, old;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, &old);
	struct sigaction sa = { .sa_handler = on_term };
	sigaction(SIGTERM, &sa, NULL);

	UHMM_OPTS(uhmm_options, o, .fault_around = 1); /* page 0 alone comes home */
	CHECK(uhmm_open(&o, &h));
	CHECK(uhmm_dummy_create(h, NULL, &a));
	CHECK(uhmm_dummy_create(h, NULL, &b));
	CHECK(uhmm_alloc(h, len, (void **)&p));
	memset(p, 'x', len);
	CHECK(uhmm_migrate(h, p, len, a, NULL));
	if (*(volatile char *)p != 'x')
		return fprintf(stderr, "page 0 came home wrong\n"), 1;
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	while (!g_stop)
		sigsuspend(&old); /* SIGTERM unblocked only here: no lost wake-up */
	CHECK(uhmm_free(h, p, len));
	CHECK(uhmm_close(h));
	return 0;
}
