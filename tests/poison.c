/* SPDX-License-Identifier: MIT */
/*
 * A lost device (UHMM_DUMMY_LOST) poisons the pages it held: their state is
 * POISONED and a CPU access raises SIGBUS (never silent zeros); pages
 * elsewhere are unaffected.
 */
#include <signal.h>

#include "common.h"

#define N 32

static sigjmp_buf env;
static volatile sig_atomic_t nsig;
static void *volatile sig_addr;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	nsig++;
	sig_addr = si->si_addr;
	siglongjmp(env, 1);
}

/* Read one word of addr; returns true when it raised SIGBUS. */
static bool read_faults(const void *addr, uint64_t *val)
{
	if (sigsetjmp(env, 1) == 0) {
		*val = *(const volatile uint64_t *)addr;
		return false;
	}
	return true;
}

static bool write_faults(void *addr)
{
	if (sigsetjmp(env, 1) == 0) {
		*(volatile uint64_t *)addr = 42;
		return false;
	}
	return true;
}

static void poison_lost_device(void **state)
{
	struct sigaction sa, saved;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGBUS, &sa, &saved), 0);

	struct uhmm *h = t_open_nofa(state);
	struct uhmm_device *d = t_dummy(h), *other = t_dummy(h);
	void *p = t_alloc(h, N);

	fill_pages(p, 0, N, 1);
	assert_migrate(h, p, N / 2 * PS(), d, N / 2, 0);
	assert_int_equal(uhmm_dummy_set_fail(d, UHMM_DUMMY_LOST), 0);
	assert_states(h, p, 0, N / 2, UHMM_STATE_POISONED, NULL);
	assert_states(h, p, N / 2, N / 2, UHMM_STATE_SYSTEM, NULL);
	assert_true(t_stats(h).pages_poisoned >= N / 2);

	/* Migrations skip poisoned pages. */
	assert_migrate(h, p, N * PS(), NULL, N / 2, N / 2);
	assert_migrate(h, p, N * PS(), other, N / 2, N / 2);
	assert_states(h, p, 0, N / 2, UHMM_STATE_POISONED, NULL);
	assert_states(h, p, N / 2, N / 2, UHMM_STATE_DEVICE, other);

	/* Device access to poisoned pages fails. */
	void *buf = malloc(PS());
	assert_non_null(buf);
	memset(buf, 0xAB, PS());
	assert_int_equal(uhmm_dummy_read(other, p, buf, 1, NULL), -EFAULT);
	assert_int_equal(check_byte(buf, 0, 1, 0xAB), -1);
	free(buf);

	/* CPU access: SIGBUS at that address, every time, read or write. */
	uint64_t v = 0;
	nsig = 0;
	assert_true(read_faults(page_at(p, 3), &v));
	assert_int_equal(nsig, 1);
	assert_ptr_equal((void *)((uintptr_t)sig_addr & ~(PS() - 1)), page_at(p, 3));
	assert_true(read_faults(page_at(p, 3), &v));
	assert_true(write_faults(page_at(p, 5)));
	assert_int_equal(nsig, 3);
	assert_states(h, p, 0, N / 2, UHMM_STATE_POISONED, NULL);

	/* The healthy half is fine (faults back from `other`). */
	assert_pages(p, N / 2, N / 2, 1);

	/* Freeing poisoned memory works; the device can be destroyed. */
	assert_int_equal(uhmm_free(h, p, N * PS()), 0);
	assert_int_equal(uhmm_device_destroy(d), 0);
	t_close(h);
	assert_int_equal(sigaction(SIGBUS, &saved, NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_BOTH(poison_lost_device),
	};
	return cmocka_run_group_tests_name("poison", tests, NULL, NULL);
}
