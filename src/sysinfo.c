/* SPDX-License-Identifier: MIT */
/* What this machine offers: for `uhmm info` and for choosing AUTO. */
#include "internal.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

UHMM_API int uhmm_sysinfo_get(struct uhmm_sysinfo *out)
{
	if (!out)
		return -EINVAL;
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
	struct uffd_probe p;
	uffd_open_best(&p, O_CLOEXEC | O_NONBLOCK);
	snprintf(out->how, sizeof(out->how), "%s", p.how);
	if (p.fd < 0) {
		out->uffd_errno = p.err;
		out->auto_mode = UHMM_FAULT_THREAD;
		return 0;
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
	return 0;
}
