/* SPDX-License-Identifier: MIT */
/*
 * `uhmm info`: what this kernel and this process offer uhmm.
 *
 * The library probes userfaultfd and says why in words (uhmm_sysinfo_get's
 * reason: one source, so applications report what this prints); this file
 * adds the process-side facts behind it (credentials, /dev/userfaultfd
 * permissions, seccomp) and advice.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "uhmm.h"
#include "uhmm_cuda.h"
#include "cli.h"

#define CAP_SYS_PTRACE_BIT 19

/* Facts about this process the library does not report. */
struct proc_facts {
	uid_t euid;
	int cap_sys_ptrace;  /* 1 yes, 0 no, -1 unknown */
	int seccomp;         /* 0 none, 1 strict, 2 filter, -1 unknown */
	int dev_exists;      /* /dev/userfaultfd exists */
	int dev_access;      /* ... and this process may open it read/write */
	mode_t dev_mode;
	int kmajor, kminor;  /* kernel version, 0.0 if unparsable */
};

static void read_status(struct proc_facts *p)
{
	char line[256];
	FILE *f = fopen("/proc/self/status", "r");

	p->cap_sys_ptrace = -1;
	p->seccomp = -1;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long caps;
		int v;

		if (sscanf(line, "CapEff: %llx", &caps) == 1)
			p->cap_sys_ptrace = (caps >> CAP_SYS_PTRACE_BIT) & 1;
		else if (sscanf(line, "Seccomp: %d", &v) == 1)
			p->seccomp = v;
	}
	fclose(f);
}

static void gather(struct proc_facts *p, const struct uhmm_sysinfo *si)
{
	struct stat st;

	memset(p, 0, sizeof(*p));
	p->euid = geteuid();
	read_status(p);
	if (stat("/dev/userfaultfd", &st) == 0) {
		p->dev_exists = 1;
		p->dev_mode = st.st_mode & 07777;
		p->dev_access = access("/dev/userfaultfd", R_OK | W_OK) == 0;
	}
	if (sscanf(si->kernel, "%d.%d", &p->kmajor, &p->kminor) != 2)
		p->kmajor = p->kminor = 0;
}

static int kernel_at_least(const struct proc_facts *p, int major, int minor)
{
	return p->kmajor > major || (p->kmajor == major && p->kminor >= minor);
}

/* The library's reading of a numeric variable: a number, non-zero. */
static int env_true(const char *s)
{
	char *end;
	unsigned long v = strtoul(s, &end, 0);

	return *end == '\0' && v != 0;
}

static const char *yesno(int v)
{
	return v < 0 ? "unknown" : v ? "yes" : "no";
}

static const char *mode_name(enum uhmm_fault_mode m)
{
	switch (m) {
	case UHMM_FAULT_THREAD: return "thread";
	case UHMM_FAULT_SIGBUS: return "sigbus";
	case UHMM_FAULT_AUTO: break;
	}
	return "auto";
}

#define KEYW 31 /* width of the key column */

/* "  key ....... value" (key indented by 2 when sub is set). */
static void row(int sub, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void row(int sub, const char *key, const char *fmt, ...)
{
	va_list ap;

	printf("%*s%-*s", sub ? 2 : 0, "", KEYW - (sub ? 2 : 0), key);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

/* A row whose value is wrapped at word boundaries to fit 79 columns. */
static void row_wrapped(int sub, const char *key, const char *text)
{
	const int width = 79 - KEYW;
	int first = 1;

	while (*text) {
		int n = (int)strlen(text);

		if (n > width) {
			n = width;
			while (n > 0 && text[n] != ' ')
				n--;
			if (n == 0)
				n = width;
		}
		if (first)
			row(sub, key, "%.*s", n, text);
		else
			printf("%*s%.*s\n", KEYW, "", n, text);
		first = 0;
		text += n;
		while (*text == ' ')
			text++;
	}
}

static void print_privileges(const struct proc_facts *p, const struct uhmm_sysinfo *si)
{
	row(1, "euid", "%u%s", (unsigned)p->euid, p->euid == 0 ? " (root)" : "");
	row(1, "CAP_SYS_PTRACE", "%s", yesno(p->cap_sys_ptrace));
	if (p->dev_exists)
		row(1, "/dev/userfaultfd", "present (mode %04o), %s", (unsigned)p->dev_mode,
		    p->dev_access ? "this process may open it" : "no access for this process");
	else
		row(1, "/dev/userfaultfd", "absent (Linux 6.1+ provides it)");
	if (si->unprivileged_sysctl >= 0)
		row(1, "vm.unprivileged_userfaultfd", "%d", si->unprivileged_sysctl);
	else
		row(1, "vm.unprivileged_userfaultfd", "unreadable");
	row(1, "seccomp", "%s",
	    p->seccomp == 0 ? "none" : p->seccomp == 1 ? "strict" :
	    p->seccomp == 2 ? "filter active" : "unknown");
}

/* Whether faults taken inside system calls are served, and why: the
 * library's reason (uhmm_sysinfo_get), so programs report the same words. */
static void print_kernel_faults(const struct uhmm_sysinfo *si)
{
	if (si->caps & UHMM_SYS_KERNEL_FAULTS) {
		row(1, "kernel-mode faults", "served");
		row_wrapped(1, "why", si->reason);
		return;
	}
	row(1, "kernel-mode faults", "NOT served (user-mode faults only)");
	row_wrapped(1, "why", si->reason);
	row_wrapped(1, "so", "a system call that touches a device-resident or never-touched "
	            "managed page (read(2), recv(2), ... into a fresh buffer) fails with "
	            "EFAULT; touch fresh buffers first, bring device-resident ones home with");
	printf("%*suhmm_migrate(h, p, len, NULL, NULL)\n", KEYW, "");
	row_wrapped(1, "to enable", "run as root, or grant access to /dev/userfaultfd "
	            "(e.g. setfacl -m u:$USER:rw /dev/userfaultfd), or "
	            "sysctl -w vm.unprivileged_userfaultfd=1");
}

/* userfaultfd does not work at all: the errno and the library's reason. */
static void print_failure(const struct uhmm_sysinfo *si)
{
	int e = si->uffd_errno;

	row(1, "error", "%s (errno %d)", e ? strerror(e) : "unknown", e);
	row_wrapped(1, "reason", si->reason);
}

struct feature {
	unsigned cap;
	const char *name;
	const char *key; /* --json */
	const char *use;
};

static const struct feature features[] = {
	{ UHMM_SYS_MOVE, "UFFDIO_MOVE", "move",
	  "zero-copy migration (else copy + unmap)" },
	{ UHMM_SYS_SIGBUS, "SIGBUS", "sigbus", "sigbus fault mode" },
	{ UHMM_SYS_POISON, "POISON", "poison", "poisoned pages after device loss" },
	{ UHMM_SYS_WP, "WP", "wp", "write-protect anonymous memory" },
	{ UHMM_SYS_EVENTS, "events UNMAP/REMOVE/REMAP", "events",
	  "munmap/madvise/mremap invalidate mirrors" },
	{ UHMM_SYS_EVENT_FORK, "EVENT_FORK", "event_fork", "fork notification" },
	{ UHMM_SYS_THREAD_ID, "THREAD_ID", "thread_id", "faulting thread id in messages" },
	{ UHMM_SYS_ZEROPAGE, "ZEROPAGE", "zeropage", "zero page on read faults" },
};

/* ---- --json: the same facts as one JSON object ---- */

/* A JSON string: quotes, backslashes and control bytes escaped (other
 * bytes pass through: the kernel and driver strings are ASCII). */
static void json_str(const char *v)
{
	putchar('"');
	for (const unsigned char *c = (const unsigned char *)v; *c; c++) {
		if (*c == '"' || *c == '\\')
			printf("\\%c", *c);
		else if (*c == '\n')
			fputs("\\n", stdout);
		else if (*c == '\t')
			fputs("\\t", stdout);
		else if (*c < 0x20 || *c == 0x7f)
			printf("\\u%04x", *c);
		else
			putchar(*c);
	}
	putchar('"');
}

/* "key": then a value; first says whether a comma goes before. */
static void json_key(int *first, const char *key)
{
	printf("%s\"%s\": ", *first ? "" : ", ", key);
	*first = 0;
}

static void json_bool3(int v) /* 1, 0, or -1 unknown (null) */
{
	fputs(v < 0 ? "null" : v ? "true" : "false", stdout);
}

static void json_str_or_null(const char *v)
{
	if (v)
		json_str(v);
	else
		fputs("null", stdout);
}

static void print_json(const struct proc_facts *p, const struct uhmm_sysinfo *si, int works)
{
	char buf[64];
	const char *env;
	int f = 1, g;

	putchar('{');
	json_key(&f, "version");
	snprintf(buf, sizeof(buf), "%d.%d.%d", UHMM_VERSION_MAJOR, UHMM_VERSION_MINOR,
	         UHMM_VERSION_PATCH);
	json_str(buf);
	json_key(&f, "kernel");
	json_str(si->kernel);
	json_key(&f, "page_size");
	printf("%ld", sysconf(_SC_PAGESIZE));

	json_key(&f, "userfaultfd");
	g = 1;
	putchar('{');
	json_key(&g, "works");
	json_bool3(works);
	json_key(&g, "errno");
	printf("%d", si->uffd_errno);
	json_key(&g, "error");
	json_str_or_null(si->uffd_errno ? strerror(si->uffd_errno) : NULL);
	json_key(&g, "how");
	json_str(si->how);
	json_key(&g, "kernel_mode_faults");
	json_bool3(!!(si->caps & UHMM_SYS_KERNEL_FAULTS));
	json_key(&g, "via_dev_userfaultfd");
	json_bool3(!!(si->caps & UHMM_SYS_DEV_UFFD));
	json_key(&g, "reason");
	json_str(si->reason);
	putchar('}');

	json_key(&f, "privileges");
	g = 1;
	putchar('{');
	json_key(&g, "euid");
	printf("%u", (unsigned)p->euid);
	json_key(&g, "cap_sys_ptrace");
	json_bool3(p->cap_sys_ptrace);
	json_key(&g, "dev_userfaultfd");
	if (p->dev_exists)
		printf("{\"present\": true, \"mode\": \"%04o\", \"access\": %s}",
		       (unsigned)p->dev_mode, p->dev_access ? "true" : "false");
	else
		fputs("{\"present\": false}", stdout);
	json_key(&g, "unprivileged_userfaultfd");
	if (si->unprivileged_sysctl >= 0)
		printf("%d", si->unprivileged_sysctl);
	else
		fputs("null", stdout);
	json_key(&g, "seccomp");
	json_str(p->seccomp == 0 ? "none" : p->seccomp == 1 ? "strict" :
	         p->seccomp == 2 ? "filter" : "unknown");
	putchar('}');

	json_key(&f, "features");
	g = 1;
	putchar('{');
	json_key(&g, "mask");
	snprintf(buf, sizeof(buf), "0x%" PRIx64, si->uffd_features);
	json_str(buf);
	for (size_t i = 0; i < sizeof(features) / sizeof(features[0]); i++) {
		json_key(&g, features[i].key);
		json_bool3(works ? !!(si->caps & features[i].cap) : -1); /* null: not probed */
	}
	putchar('}');

	json_key(&f, "auto_mode");
	json_str_or_null(works ? mode_name(si->auto_mode) : NULL);
	env = getenv("UHMM_FAULT_MODE");
	json_key(&f, "env_fault_mode");
	json_str_or_null(env && (strcasecmp(env, "thread") == 0 || strcasecmp(env, "sigbus") == 0)
	                         ? env : NULL);
	env = getenv("UHMM_NO_MOVE");
	json_key(&f, "env_no_move");
	json_bool3(env && env[0] && env_true(env));

	struct uhmm_cuda_info ci = UHMM_CUDA_INFO_INIT;
	int rc = uhmm_cuda_available(&ci);
	json_key(&f, "cuda");
	g = 1;
	putchar('{');
	json_key(&g, "available");
	json_bool3(rc == 0);
	json_key(&g, "library");
	json_str(ci.library);
	json_key(&g, "reason");
	json_str(ci.reason);
	if (rc == 0) {
		json_key(&g, "driver_version");
		printf("%d", ci.driver_version);
		json_key(&g, "gpus");
		putchar('[');
		for (int i = 0; i < ci.device_count && i < UHMM_CUDA_MAX_DEVICES; i++) {
			printf("%s{\"name\": ", i ? ", " : "");
			json_str(ci.dev[i].name);
			printf(", \"total_mem\": %" PRIu64 ", \"compute\": \"%d.%d\", \"vmm\": %s}",
			       ci.dev[i].total_mem, ci.dev[i].cc_major, ci.dev[i].cc_minor,
			       ci.dev[i].vmm ? "true" : "false");
		}
		putchar(']');
	}
	putchar('}');
	puts("}");
}

/* CUDA: is a driver there, and which GPUs (does not create a device). */
static void print_cuda(void)
{
	struct uhmm_cuda_info ci = UHMM_CUDA_INFO_INIT;
	int rc = uhmm_cuda_available(&ci);

	putchar('\n');
	if (rc) {
		row(0, "cuda", "not available (%s)", rc == -ENOENT ? "no driver" : "driver unusable");
		row_wrapped(1, "why", ci.reason);
		return;
	}
	row(0, "cuda", "driver %d.%d (%s), %d GPU%s", ci.driver_version / 1000,
	    ci.driver_version % 1000 / 10, ci.library, ci.device_count,
	    ci.device_count == 1 ? "" : "s");
	for (int i = 0; i < ci.device_count && i < UHMM_CUDA_MAX_DEVICES; i++) {
		char key[16];
		snprintf(key, sizeof(key), "gpu %d", i);
		row(1, key, "%s, %.1f GiB, compute %d.%d%s", ci.dev[i].name,
		    (double)ci.dev[i].total_mem / (1 << 30), ci.dev[i].cc_major, ci.dev[i].cc_minor,
		    ci.dev[i].vmm ? "" : " (no virtual memory management: uhmm cannot use it)");
	}
}

int cmd_info(int argc, char **argv)
{
	struct uhmm_sysinfo si = UHMM_SYSINFO_INIT;
	struct proc_facts p;
	const char *env;
	int works, rc;

	if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
		cli_help(stdout, "info");
		return CLI_EXIT_OK;
	}
	int json = argc >= 2 && strcmp(argv[1], "--json") == 0;
	if (argc > 1 + json)
		return cli_usage_error("info", "unexpected argument '%s'", argv[1 + json]);

	memset(&si, 0, sizeof(si));
	si.sz = sizeof(si);
	rc = uhmm_sysinfo_get(&si);
	if (rc < 0) {
		fprintf(stderr, "uhmm info: uhmm_sysinfo_get: %s\n", strerror(-rc));
		return CLI_EXIT_FAIL;
	}
	si.kernel[sizeof(si.kernel) - 1] = '\0';
	si.how[sizeof(si.how) - 1] = '\0';
	si.reason[sizeof(si.reason) - 1] = '\0';
	gather(&p, &si);
	works = !!(si.caps & UHMM_SYS_UFFD);
	if (json) {
		print_json(&p, &si, works);
		return works ? CLI_EXIT_OK : CLI_EXIT_FAIL;
	}

	printf("uhmm %d.%d.%d\n\n", UHMM_VERSION_MAJOR, UHMM_VERSION_MINOR, UHMM_VERSION_PATCH);
	row(0, "kernel", "Linux %s", si.kernel[0] ? si.kernel : "(unknown)");
	row(0, "page size", "%ld bytes", sysconf(_SC_PAGESIZE));

	putchar('\n');
	if (works)
		row(0, "userfaultfd", "works, %s",
		    (si.caps & UHMM_SYS_KERNEL_FAULTS) ? "kernel-mode faults too"
		                                       : "user-mode faults only");
	else
		row(0, "userfaultfd", "DOES NOT WORK here");
	if (works && si.how[0])
		row_wrapped(1, "opened", si.how);
	print_privileges(&p, &si);
	if (works)
		print_kernel_faults(&si);
	else
		print_failure(&si);

	putchar('\n');
	row(0, "features", "raw UFFDIO_API mask 0x%" PRIx64 "%s", si.uffd_features,
	    works ? "" : " (not probed)");
	for (size_t i = 0; i < sizeof(features) / sizeof(features[0]); i++)
		row(1, features[i].name, "%-3s  %s",
		    works ? yesno(!!(si.caps & features[i].cap)) : "-", features[i].use);
	if (works && !(si.caps & UHMM_SYS_MOVE) && !kernel_at_least(&p, 6, 8))
		printf("%*s(UFFDIO_MOVE needs Linux 6.8: migrations copy + unmap)\n", KEYW, "");
	env = getenv("UHMM_NO_MOVE");
	if (env && env[0] && env_true(env))
		row(1, "UHMM_NO_MOVE", "%s: contexts will not use UFFDIO_MOVE", env);

	putchar('\n');
	if (!works) {
		row(0, "fault mode", "none: uhmm_open fails here");
	} else if (si.auto_mode == UHMM_FAULT_THREAD) {
		row(0, "fault mode", "AUTO picks thread");
		printf("  A service thread serves faults, so system calls such as read(2) into\n"
		       "  device-resident memory keep working.  UHMM_FAULT_MODE=sigbus gives\n"
		       "  faster faults (resolved in the faulting thread, no cross-thread\n"
		       "  wake-up), but such system calls then fail with EFAULT, and so do\n"
		       "  system calls into managed pages never touched (read(2) into a fresh\n"
		       "  uhmm_alloc or adopted buffer): touch a buffer before I/O there.\n");
	} else {
		row(0, "fault mode", "AUTO picks %s", mode_name(si.auto_mode));
		printf("  Faults are resolved in the faulting thread's SIGBUS handler (fast, no\n"
		       "  cross-thread wake-up).  Kernel-mode faults cannot be served here, so\n"
		       "  system calls such as read(2) into device-resident memory fail with\n"
		       "  EFAULT in either mode, and so do system calls into managed pages\n"
		       "  never touched (read(2) into a fresh uhmm_alloc or adopted buffer,\n"
		       "  recv(2), readv(2), ...): touch a buffer before handing it to the kernel.\n");
	}
	env = getenv("UHMM_FAULT_MODE");
	if (works && env && (strcasecmp(env, "thread") == 0 || strcasecmp(env, "sigbus") == 0))
		printf("  UHMM_FAULT_MODE=%s is set: it replaces AUTO for contexts opened\n"
		       "  without an explicit mode.\n", env);
	print_cuda();
	return works ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}
