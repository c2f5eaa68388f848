/* SPDX-License-Identifier: MIT */
/* What this machine offers: for `uhmm info` and for choosing AUTO. */
#include "internal.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#define CAP_SYS_PTRACE_BIT 19

/* What the process may do, as far as the reason needs it. */
struct creds {
	int ptrace;     /* CAP_SYS_PTRACE effective: 1, 0, -1 unknown */
	int seccomp;    /* /proc/self/status Seccomp: 0 none, 1 strict, 2 filter, -1 unknown */
	int dev_exists; /* /dev/userfaultfd */
	int dev_access; /* ... openable read/write by this process */
};

static void read_creds(struct creds *c)
{
	char line[256];
	struct stat st;
	FILE *f = fopen("/proc/self/status", "re");

	c->ptrace = c->seccomp = -1;
	if (f) {
		while (fgets(line, sizeof(line), f)) {
			unsigned long long caps;
			int v;
			if (sscanf(line, "CapEff: %llx", &caps) == 1)
				c->ptrace = (int)((caps >> CAP_SYS_PTRACE_BIT) & 1);
			else if (sscanf(line, "Seccomp: %d", &v) == 1)
				c->seccomp = v;
		}
		fclose(f);
	}
	c->dev_exists = stat("/dev/userfaultfd", &st) == 0;
	c->dev_access = c->dev_exists && access("/dev/userfaultfd", R_OK | W_OK) == 0;
}

static int kernel_at_least(const char *release, int major, int minor)
{
	int ma, mi;
	if (sscanf(release, "%d.%d", &ma, &mi) != 2)
		return 1; /* unparsable: do not blame the kernel's age */
	return ma > major || (ma == major && mi >= minor);
}

/* Why userfaultfd cannot be opened, from its errno and the process. */
static const char *failure_cause(int e, const struct creds *c, const char *release)
{
	if (c->seccomp == 2 && (e == EPERM || e == ENOSYS || e == EACCES))
		return "a seccomp filter blocks userfaultfd(2), as Docker's default profile does: "
		       "allow it in the profile (or --security-opt seccomp=unconfined)";
	if (e == ENOSYS)
		return "the kernel has no userfaultfd (CONFIG_USERFAULTFD off) or a sandbox "
		       "hides the system call";
	if ((e == EPERM || e == EACCES) && !kernel_at_least(release, 5, 11))
		return "this kernel (< 5.11) has no user-mode-only userfaultfd and "
		       "vm.unprivileged_userfaultfd=0: run as root or set it to 1";
	if (e == EPERM || e == EACCES)
		return "denied by a security module (SELinux, AppArmor) or by a seccomp filter "
		       "of a container or sandbox";
	if (e == EINVAL)
		return "the UFFDIO_API handshake failed: the kernel is too old for uhmm "
		       "(Linux 5.11 or later is needed)";
	if (e == EMFILE || e == ENFILE)
		return "out of file descriptors";
	if (e == ENOMEM)
		return "out of memory";
	return "unknown cause";
}

/* The sentence uhmm_sysinfo_get reports and `uhmm info` prints. */
static void fill_reason(struct uhmm_sysinfo *out, const struct creds *c)
{
	char *r = out->reason;
	size_t n = sizeof(out->reason);

	if (!(out->caps & UHMM_SYS_UFFD)) {
		snprintf(r, n, "userfaultfd cannot be opened (%s): %s", strerror(out->uffd_errno),
		         failure_cause(out->uffd_errno, c, out->kernel));
		return;
	}
	if (out->caps & UHMM_SYS_KERNEL_FAULTS) {
		const char *how = (out->caps & UHMM_SYS_DEV_UFFD) ? "this process can open /dev/userfaultfd"
		                  : c->ptrace == 1 ? (geteuid() == 0 ? "this process is root"
		                                                     : "this process has CAP_SYS_PTRACE")
		                  : out->unprivileged_sysctl == 1 ? "vm.unprivileged_userfaultfd=1"
		                                                  : "the kernel allows it";
		snprintf(r, n, "kernel-mode faults are served (%s): AUTO picks thread, and "
		         "read(2)/write(2) into device-resident memory work", how);
		return;
	}
	char why[128];
	size_t k = 0;
	why[0] = '\0';
	if (geteuid() != 0 && c->ptrace != 1)
		k += (size_t)snprintf(why + k, sizeof(why) - k, "not root, no CAP_SYS_PTRACE");
	if (k < sizeof(why))
		k += (size_t)snprintf(why + k, sizeof(why) - k, "%s%s", k ? "; " : "",
		                      c->dev_exists ? "no access to /dev/userfaultfd"
		                                    : "no /dev/userfaultfd");
	if (k < sizeof(why) && out->unprivileged_sysctl == 0)
		snprintf(why + k, sizeof(why) - k, "; vm.unprivileged_userfaultfd=0");
	snprintf(r, n, "kernel-mode faults cannot be served (%s): AUTO picks %s", why,
	         out->auto_mode == UHMM_FAULT_SIGBUS
	                 ? "sigbus"
	                 : "thread (the kernel lacks UFFD_FEATURE_SIGBUS)");
}

static void sysinfo_fill(struct uhmm_sysinfo *out)
{
	memset(out, 0, sizeof(*out));
	struct utsname u;
	if (!uname(&u))
		snprintf(out->kernel, sizeof(out->kernel), "%s", u.release);
	out->unprivileged_sysctl = -1;
	FILE *f = fopen("/proc/sys/vm/unprivileged_userfaultfd", "re");
	if (f) {
		if (fscanf(f, "%d", &out->unprivileged_sysctl) != 1)
			out->unprivileged_sysctl = -1;
		fclose(f);
	}
	struct creds c;
	read_creds(&c);
	struct uffd_probe p;
	uffd_open_best(&p, O_CLOEXEC | O_NONBLOCK);
	snprintf(out->how, sizeof(out->how), "%s", p.how);
	if (p.fd < 0) {
		out->uffd_errno = p.err;
		out->auto_mode = UHMM_FAULT_THREAD;
		fill_reason(out, &c);
		return;
	}
	uint64_t feat = 0;
	uffd_api(p.fd, 0, &feat);
	out->uffd_features = feat;
	out->caps = UHMM_SYS_UFFD;
	if (p.kernel_faults)
		out->caps |= UHMM_SYS_KERNEL_FAULTS;
	if (p.via_dev)
		out->caps |= UHMM_SYS_DEV_UFFD;
	if (feat & UFFD_FEATURE_MOVE)
		out->caps |= UHMM_SYS_MOVE;
	if (feat & UFFD_FEATURE_SIGBUS)
		out->caps |= UHMM_SYS_SIGBUS;
	if (feat & UFFD_FEATURE_POISON)
		out->caps |= UHMM_SYS_POISON;
	if (feat & UFFD_FEATURE_PAGEFAULT_FLAG_WP)
		out->caps |= UHMM_SYS_WP;
	if ((feat & UFFD_FEATURE_EVENT_REMOVE) && (feat & UFFD_FEATURE_EVENT_UNMAP) &&
	    (feat & UFFD_FEATURE_EVENT_REMAP))
		out->caps |= UHMM_SYS_EVENTS;
	if (feat & UFFD_FEATURE_EVENT_FORK)
		out->caps |= UHMM_SYS_EVENT_FORK;
	if (feat & UFFD_FEATURE_THREAD_ID)
		out->caps |= UHMM_SYS_THREAD_ID;
	out->caps |= UHMM_SYS_ZEROPAGE; /* part of the base API on anonymous memory */
	out->auto_mode = p.kernel_faults || !(feat & UFFD_FEATURE_SIGBUS) ? UHMM_FAULT_THREAD
	                                                                  : UHMM_FAULT_SIGBUS;
	close(p.fd);
	fill_reason(out, &c);
}

UHMM_API int uhmm_sysinfo_get(struct uhmm_sysinfo *out)
{
	if (!out)
		return -EINVAL;
	long n = sized_check(out, UHMM_SYSINFO_V1, UHMM_SYSINFO_KNOWN);
	if (n < 0)
		return (int)n;
	/* Filled whole here, then only the caller's part copied out. */
	struct uhmm_sysinfo si;
	sysinfo_fill(&si);
	si.sz = out->sz;
	memcpy(out, &si, (size_t)n);
	return 0;
}
