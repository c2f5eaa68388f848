/* SPDX-License-Identifier: MIT */
/*
 * uhmm_sysinfo_get's reason: always a sentence, and where userfaultfd is
 * blocked (a seccomp filter, as in a container) uhmm_open fails with
 * -EPERM and the reason says userfaultfd and seccomp.
 */
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "common.h"

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW 0xAA00 /* _IO(0xAA, 0x00) */
#endif

static void reason_is_a_sentence(void **state)
{
	(void)state;
	struct uhmm_sysinfo si = UHMM_SYSINFO_INIT;
	memset(&si, 0xff, sizeof(si)); /* no stale byte may pass for a terminator */
	si.sz = sizeof(si);
	assert_int_equal(uhmm_sysinfo_get(&si), 0);
	assert_non_null(memchr(si.reason, '\0', sizeof(si.reason)));
	assert_true(strlen(si.reason) > 10);
	/* It matches the state it explains. */
	if (!(si.caps & UHMM_SYS_UFFD))
		assert_non_null(strstr(si.reason, "userfaultfd cannot be opened"));
	else if (si.caps & UHMM_SYS_KERNEL_FAULTS)
		assert_non_null(strstr(si.reason, "AUTO picks thread"));
	else
		assert_non_null(strstr(si.reason, "kernel-mode faults cannot be served"));
	assert_int_equal(uhmm_sysinfo_get(NULL), -EINVAL);
}

#if defined(__x86_64__)
#define T_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define T_ARCH AUDIT_ARCH_AARCH64
#endif

#ifdef T_ARCH
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG1_LO offsetof(struct seccomp_data, args[1])
#else
#define ARG1_LO (offsetof(struct seccomp_data, args[1]) + 4)
#endif

/* Fail userfaultfd(2) and the /dev/userfaultfd ioctl that makes one with
 * EPERM, as a container's profile does; allow everything else. */
static int block_userfaultfd(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, T_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_userfaultfd, 4, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ioctl, 0, 2),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG1_LO),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, USERFAULTFD_IOC_NEW, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) ? -1 : 0;
}

/* In a child (the filter cannot be removed): 0 ok, 77 filter refused,
 * else the number of the check that failed. */
static int blocked_child(void)
{
	if (block_userfaultfd())
		return 77;
	struct uhmm *h = NULL;
	int r = uhmm_open(NULL, &h);
	if (r != -EPERM) {
		fprintf(stderr, "uhmm_open under the filter: %d\n", r);
		return 1;
	}
	struct uhmm_sysinfo si = UHMM_SYSINFO_INIT;
	if (uhmm_sysinfo_get(&si))
		return 2;
	fprintf(stderr, "reason under the filter: %s\n", si.reason);
	if (si.caps & UHMM_SYS_UFFD)
		return 3;
	if (si.uffd_errno != EPERM)
		return 4;
	if (!memchr(si.reason, '\0', sizeof(si.reason)) || !strstr(si.reason, "userfaultfd"))
		return 5;
	if (!strstr(si.reason, "seccomp"))
		return 6;
	return 0;
}

static void blocked_by_seccomp(void **state)
{
	(void)state;
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(blocked_child());
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == 77)
		skip(); /* seccomp filters are not allowed here */
	assert_int_equal(WEXITSTATUS(st), 0);
}
#else
static void blocked_by_seccomp(void **state)
{
	(void)state;
	skip(); /* the filter names this architecture's audit arch */
}
#endif

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(reason_is_a_sentence),
		cmocka_unit_test(blocked_by_seccomp),
	};
	return cmocka_run_group_tests_name("sysinfo", tests, NULL, NULL);
}
