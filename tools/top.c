/* SPDX-License-Identifier: MIT */
/*
 * `uhmm stat` and `uhmm top`: the live view of running processes, read
 * from the status segments their contexts publish (src/status.h says the
 * layout and how a snapshot is asked for).
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "uhmm.h"
#include "cli.h"
#include "../src/status.h"

#define SHM_DIR "/dev/shm"
#define MAX_CTX 64
#define MIN_U64(a, b) ((a) < (b) ? (a) : (b))

static const char *const counter_names[UHMM_STATUS__COUNT] = {
	"cpu_faults", "pages_to_device", "pages_to_system", "device_faults", "invalidations",
	"pages_skipped", "pages_zero_filled", "move_calls", "copy_calls", "fallback_pages",
	"deferred_faults", "events", "pages_poisoned", "pages_ahead", "pages_staged",
	"pages_unshared",
};
static const char *const state_names[UHMM_STATUS_NSTATES] = {
	"none", "system", "device", "coherent", "poisoned",
};
static const char *const mode_names[] = { "auto", "thread", "sigbus" };

/* One context's view: a copy of its segment, taken consistently. */
struct view {
	struct uhmm_status s;
	bool snapshot; /* devices and ranges answered (else: counters only) */
};

static void ns_sleep(long ns)
{
	struct timespec ts = { ns / 1000000000L, ns % 1000000000L };
	nanosleep(&ts, NULL);
}

/* Ask the context's status thread for a snapshot and wait (at most 1 s:
 * a stopped process shows its counters only). */
static bool request_snapshot(struct uhmm_status *s)
{
	uint32_t r = atomic_fetch_add(&s->req, 1) + 1;
	syscall(SYS_futex, (uint32_t *)&s->req, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
	for (int i = 0; i < 100; i++) {
		uint32_t d = atomic_load(&s->done);
		if ((int32_t)(d - r) >= 0)
			return true;
		struct timespec to = { 0, 10000000L };
		syscall(SYS_futex, (uint32_t *)&s->done, FUTEX_WAIT, d, &to, NULL, 0);
	}
	return false;
}

static int read_view(const char *name, struct view *out)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), SHM_DIR "/%s", name);
	bool rw = true;
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		rw = false;
		fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) || (size_t)st.st_size < sizeof(struct uhmm_status)) {
		close(fd);
		return -EPROTO;
	}
	struct uhmm_status *s = mmap(NULL, sizeof(*s), rw ? PROT_READ | PROT_WRITE : PROT_READ,
	                             MAP_SHARED, fd, 0);
	close(fd);
	if (s == MAP_FAILED)
		return -errno;
	int r = 0;
	if (memcmp(s->magic, UHMM_STATUS_MAGIC, sizeof(s->magic)) ||
	    s->version != UHMM_STATUS_VERSION || s->size != sizeof(*s)) {
		r = -EPROTO; /* another version of the library, or not ready yet */
		goto out;
	}
	out->snapshot = rw && request_snapshot(s);
	/* The seqlock: a copy with seq even and unchanged across it. */
	for (int tries = 0;; tries++) {
		uint32_t q = atomic_load(&s->seq);
		if (!(q & 1)) {
			memcpy(&out->s, (void *)s, sizeof(*s));
			atomic_thread_fence(memory_order_acquire);
			if (atomic_load(&s->seq) == q)
				break;
		}
		if (tries > 1000) {
			out->snapshot = false;
			memcpy(&out->s, (void *)s, sizeof(*s));
			break;
		}
		ns_sleep(100000);
	}
	if (!out->snapshot) {
		out->s.ndevices = 0;
		out->s.nranges = out->s.nranges_total = 0;
	}
	if (out->s.ndevices > UHMM_STATUS_NDEV)
		out->s.ndevices = UHMM_STATUS_NDEV;
	if (out->s.nranges > UHMM_STATUS_NRANGES)
		out->s.nranges = UHMM_STATUS_NRANGES;
	if (out->s.nstats > UHMM_STATUS__COUNT)
		out->s.nstats = UHMM_STATUS__COUNT;
out:
	munmap(s, sizeof(*s));
	return r;
}

static int cmp_names(const void *a, const void *b)
{
	unsigned long pa, pb, sa, sb;
	sscanf(*(char *const *)a, UHMM_STATUS_PREFIX "%lu.%lu", &pa, &sa);
	sscanf(*(char *const *)b, UHMM_STATUS_PREFIX "%lu.%lu", &pb, &sb);
	return pa != pb ? (pa < pb ? -1 : 1) : sa < sb ? -1 : sa > sb;
}

/* Is the process alive but without name mapped (it reused the pid of the
 * one that left the segment)?  False where its maps cannot be read. */
static bool maps_lack(unsigned long pid, const char *name)
{
	char path[64], line[PATH_MAX + 128], want[PATH_MAX];
	snprintf(path, sizeof(path), "/proc/%lu/maps", pid);
	snprintf(want, sizeof(want), SHM_DIR "/%s\n", name);
	FILE *f = fopen(path, "re");
	if (!f)
		return false;
	bool found = false, any = false;
	while (!found && fgets(line, sizeof(line), f)) {
		any = true;
		size_t n = strlen(line), w = strlen(want);
		found = n >= w && strcmp(line + n - w, want) == 0;
	}
	fclose(f);
	return any && !found;
}

/* The segments of pid (0: every process), sorted; stale ones (their
 * process is gone, or its pid now belongs to a process that does not map
 * them) removed on the way, best effort. */
static int collect(long pid, struct view *views, int max)
{
	DIR *dir = opendir(SHM_DIR);
	if (!dir)
		return 0;
	char *names[MAX_CTX];
	int n = 0;
	struct dirent *de;
	while ((de = readdir(dir)) && n < MAX_CTX) {
		unsigned long p, serial;
		char tail;
		if (sscanf(de->d_name, UHMM_STATUS_PREFIX "%lu.%lu%c", &p, &serial, &tail) != 2)
			continue;
		if (pid && (long)p != pid)
			continue;
		if ((kill((pid_t)p, 0) && errno == ESRCH) || maps_lack(p, de->d_name)) {
			char path[PATH_MAX];
			snprintf(path, sizeof(path), SHM_DIR "/%s", de->d_name);
			unlink(path);
			continue;
		}
		names[n++] = strdup(de->d_name);
		if (!names[n - 1])
			n--;
	}
	closedir(dir);
	qsort(names, (size_t)n, sizeof(names[0]), cmp_names);
	int got = 0;
	for (int i = 0; i < n; i++) {
		if (got < max && read_view(names[i], &views[got]) == 0)
			got++;
		free(names[i]);
	}
	return got;
}

static const char *mode_name(uint32_t m)
{
	return m < 3 ? mode_names[m] : "?";
}

static void print_json(const struct view *v, int n)
{
	printf("{\n  \"contexts\": [");
	for (int i = 0; i < n; i++) {
		const struct uhmm_status *s = &v[i].s;
		printf("%s\n    {\n      \"pid\": %d,\n      \"serial\": %u,\n      \"fault_mode\": \"%s\",\n"
		       "      \"snapshot\": %s,\n      \"counters\": {",
		       i ? "," : "", s->pid, s->serial, mode_name(s->fault_mode),
		       v[i].snapshot ? "true" : "false");
		for (uint32_t k = 0; k < s->nstats; k++)
			printf("%s\n        \"%s\": %llu", k ? "," : "", counter_names[k],
			       (unsigned long long)s->stats[k]);
		printf("\n      },\n      \"devices\": [");
		for (uint32_t d = 0; d < s->ndevices; d++) {
			const struct uhmm_status_dev *o = &s->dev[d];
			printf("%s\n        { \"name\": \"", d ? "," : "");
			for (const char *c = o->name; *c; c++)
				if (isprint((unsigned char)*c) && *c != '"' && *c != '\\')
					putchar(*c);
			printf("\", \"slot\": %u, \"blocks\": %u, \"used_pages\": %llu, "
			       "\"coherent_pages\": %llu, \"capacity_pages\": %llu, \"max_pages\": %llu }",
			       o->slot, o->nblocks, (unsigned long long)o->used_pages,
			       (unsigned long long)o->coherent_pages,
			       (unsigned long long)o->capacity_pages, (unsigned long long)o->max_pages);
		}
		printf("%s],\n      \"ranges_total\": %u,\n      \"ranges\": [", s->ndevices ? "\n      " : "",
		       s->nranges_total);
		for (uint32_t r = 0; r < s->nranges; r++) {
			const struct uhmm_status_range *g = &s->range[r];
			printf("%s\n        { \"start\": \"0x%llx\", \"end\": \"0x%llx\", \"pages\": {",
			       r ? "," : "", (unsigned long long)g->start, (unsigned long long)g->end);
			for (int k = 0; k < UHMM_STATUS_NSTATES; k++)
				printf("%s \"%s\": %llu", k ? "," : "", state_names[k],
				       (unsigned long long)g->pages[k]);
			printf(" } }");
		}
		printf("%s]\n    }", s->nranges ? "\n      " : "");
	}
	printf("%s]\n}\n", n ? "\n  " : "");
}

static void print_text(const struct view *v, int n)
{
	if (!n)
		printf("no uhmm context found\n");
	for (int i = 0; i < n; i++) {
		const struct uhmm_status *s = &v[i].s;
		printf("pid %d context %u (%s mode)%s\n", s->pid, s->serial, mode_name(s->fault_mode),
		       v[i].snapshot ? "" : " [no answer: counters only]");
		for (uint32_t k = 0; k < s->nstats; k++)
			printf("  %-18s %llu\n", counter_names[k], (unsigned long long)s->stats[k]);
		for (uint32_t d = 0; d < s->ndevices; d++) {
			const struct uhmm_status_dev *o = &s->dev[d];
			char u[32], c[32];
			printf("  device %s: %s used of %s (%llu/%llu pages, %llu coherent, %u blocks)\n",
			       o->name, cli_fmt_bytes(u, sizeof(u), o->used_pages * 4096),
			       cli_fmt_bytes(c, sizeof(c), o->capacity_pages * 4096),
			       (unsigned long long)o->used_pages, (unsigned long long)o->capacity_pages,
			       (unsigned long long)o->coherent_pages, o->nblocks);
		}
		for (uint32_t r = 0; r < s->nranges; r++) {
			const struct uhmm_status_range *g = &s->range[r];
			printf("  range 0x%llx-0x%llx:", (unsigned long long)g->start,
			       (unsigned long long)g->end);
			for (int k = 0; k < UHMM_STATUS_NSTATES; k++)
				printf(" %s %llu", state_names[k], (unsigned long long)g->pages[k]);
			putchar('\n');
		}
		if (s->nranges_total > s->nranges)
			printf("  (%u more ranges not shown)\n", s->nranges_total - s->nranges);
	}
}

static int parse_pid(const char *cmd, const char *arg, long *pid)
{
	char *end;
	errno = 0;
	long p = strtol(arg, &end, 10);
	if (errno || *end || p <= 0)
		return cli_usage_error(cmd, "bad PID '%s'", arg);
	*pid = p;
	return 0;
}

int cmd_stat(int argc, char **argv)
{
	long pid = 0;
	bool json = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			cli_help(stdout, "stat");
			return CLI_EXIT_OK;
		} else if (!strcmp(argv[i], "-j") || !strcmp(argv[i], "--json")) {
			json = true;
		} else if (argv[i][0] == '-' || pid) {
			return cli_usage_error("stat", "unexpected argument '%s'", argv[i]);
		} else if (parse_pid("stat", argv[i], &pid)) {
			return CLI_EXIT_USAGE;
		}
	}
	static struct view views[MAX_CTX];
	int n = collect(pid, views, MAX_CTX);
	if (json)
		print_json(views, n);
	else
		print_text(views, n);
	return pid && !n ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

/* ---- top ---- */

static volatile sig_atomic_t g_quit;
static void on_signal(int sig) { (void)sig; g_quit = 1; }

#define BAR_WIDTH 40
/* A bar of BAR_WIDTH cells for the page states of one range: each state
 * gets its share, at least one cell when it has any page. */
static void print_bar(const uint64_t pages[UHMM_STATUS_NSTATES])
{
	static const char cell[UHMM_STATUS_NSTATES] = { '.', 's', 'D', 'C', 'X' };
	static const char *const color[UHMM_STATUS_NSTATES] = {
		"", "\033[32m", "\033[34m", "\033[36m", "\033[31m",
	};
	uint64_t total = 0;
	for (int k = 0; k < UHMM_STATUS_NSTATES; k++)
		total += pages[k];
	int w[UHMM_STATUS_NSTATES] = { 0 }, used = 0;
	for (int k = 1; k < UHMM_STATUS_NSTATES && total; k++) {
		w[k] = (int)(pages[k] * BAR_WIDTH / total);
		if (pages[k] && !w[k])
			w[k] = 1;
		used += w[k];
	}
	w[0] = used < BAR_WIDTH ? BAR_WIDTH - used : 0;
	putchar('[');
	for (int k = 1; k < UHMM_STATUS_NSTATES; k++) {
		if (!w[k])
			continue;
		fputs(color[k], stdout);
		for (int j = 0; j < w[k]; j++)
			putchar(cell[k]);
		fputs("\033[0m", stdout);
	}
	for (int j = 0; j < w[0]; j++)
		putchar(cell[0]);
	putchar(']');
}

struct prev {
	int32_t pid;
	uint32_t serial;
	uint64_t stats[UHMM_STATUS__COUNT];
	double t;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void draw(const struct view *v, int n, struct prev *prev, int *nprev)
{
	double t = now_s();
	struct prev next[MAX_CTX];
	fputs("\033[H\033[2J", stdout);
	printf("uhmm top — %d context%s   (q: quit)   bars: s system  D device  C coherent"
	       "  X poisoned  . none\n",
	       n, n == 1 ? "" : "s");
	for (int i = 0; i < n; i++) {
		const struct uhmm_status *s = &v[i].s;
		const struct prev *p = NULL;
		for (int j = 0; j < *nprev; j++)
			if (prev[j].pid == s->pid && prev[j].serial == s->serial)
				p = &prev[j];
		double dt = p ? t - p->t : 0;
#define RATE(k) (p && dt > 0 ? (double)(s->stats[k] - p->stats[k]) / dt : 0.0)
		printf("\npid %d context %u  %s mode%s\n", s->pid, s->serial, mode_name(s->fault_mode),
		       v[i].snapshot ? "" : "  [no answer: counters only]");
		printf("  migrations/s: to device %.0f  to system %.0f   faults/s: cpu %.0f  device %.0f"
		       "   invalidations/s %.0f\n",
		       RATE(UHMM_STATUS_TO_DEVICE), RATE(UHMM_STATUS_TO_SYSTEM),
		       RATE(UHMM_STATUS_CPU_FAULTS), RATE(UHMM_STATUS_DEVICE_FAULTS),
		       RATE(UHMM_STATUS_INVALIDATIONS));
#undef RATE
		printf("  totals: to device %llu  to system %llu  cpu faults %llu  device faults %llu"
		       "  poisoned %llu\n",
		       (unsigned long long)s->stats[UHMM_STATUS_TO_DEVICE],
		       (unsigned long long)s->stats[UHMM_STATUS_TO_SYSTEM],
		       (unsigned long long)s->stats[UHMM_STATUS_CPU_FAULTS],
		       (unsigned long long)s->stats[UHMM_STATUS_DEVICE_FAULTS],
		       (unsigned long long)s->stats[UHMM_STATUS_POISONED]);
		for (uint32_t d = 0; d < s->ndevices; d++) {
			const struct uhmm_status_dev *o = &s->dev[d];
			char u[32], c[32];
			uint64_t pages[UHMM_STATUS_NSTATES] = { 0 };
			pages[UHMM_STATE_NONE] = o->capacity_pages > o->used_pages
			                                 ? o->capacity_pages - o->used_pages : 0;
			pages[UHMM_STATE_DEVICE_COHERENT] = o->coherent_pages;
			pages[UHMM_STATE_DEVICE] = o->used_pages - MIN_U64(o->coherent_pages, o->used_pages);
			printf("  device %-12s ", o->name);
			print_bar(pages);
			printf(" %s / %s", cli_fmt_bytes(u, sizeof(u), o->used_pages * 4096),
			       cli_fmt_bytes(c, sizeof(c), o->capacity_pages * 4096));
			if (o->max_pages)
				printf(" (grows to %s)", cli_fmt_bytes(c, sizeof(c), o->max_pages * 4096));
			putchar('\n');
		}
		for (uint32_t r = 0; r < s->nranges; r++) {
			const struct uhmm_status_range *g = &s->range[r];
			char sz[32];
			printf("  range 0x%012llx %9s ", (unsigned long long)g->start,
			       cli_fmt_bytes(sz, sizeof(sz), g->end - g->start));
			print_bar(g->pages);
			printf(" s %llu D %llu C %llu X %llu\n", (unsigned long long)g->pages[1],
			       (unsigned long long)g->pages[2], (unsigned long long)g->pages[3],
			       (unsigned long long)g->pages[4]);
		}
		if (s->nranges_total > s->nranges)
			printf("  (%u more ranges)\n", s->nranges_total - s->nranges);
		next[i].pid = s->pid;
		next[i].serial = s->serial;
		memcpy(next[i].stats, (void *)s->stats, sizeof(next[i].stats));
		next[i].t = t;
	}
	if (!n)
		printf("\nno uhmm context found\n");
	fflush(stdout);
	memcpy(prev, next, (size_t)n * sizeof(next[0]));
	*nprev = n;
}

int cmd_top(int argc, char **argv)
{
	long pid = 0, iterations = 0;
	double interval = 1.0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			cli_help(stdout, "top");
			return CLI_EXIT_OK;
		} else if (!strcmp(a, "-d") || !strcmp(a, "--interval")) {
			char *end;
			if (++i >= argc)
				return cli_usage_error("top", "%s needs a value", a);
			interval = strtod(argv[i], &end);
			if (*end || !(interval >= 0.05 && interval <= 3600))
				return cli_usage_error("top", "bad interval '%s'", argv[i]);
		} else if (!strcmp(a, "-n") || !strcmp(a, "--iterations")) {
			char *end;
			if (++i >= argc)
				return cli_usage_error("top", "%s needs a value", a);
			iterations = strtol(argv[i], &end, 10);
			if (*end || iterations <= 0)
				return cli_usage_error("top", "bad iteration count '%s'", argv[i]);
		} else if (a[0] == '-' || pid) {
			return cli_usage_error("top", "unexpected argument '%s'", a);
		} else if (parse_pid("top", a, &pid)) {
			return CLI_EXIT_USAGE;
		}
	}
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	/* Keys without Enter, not echoed: q quits. */
	struct termios old, raw;
	bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
	if (tty) {
		raw = old;
		raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
		raw.c_cc[VMIN] = 0;
		raw.c_cc[VTIME] = 0;
		tcsetattr(STDIN_FILENO, TCSANOW, &raw);
	}
	static struct view views[MAX_CTX];
	static struct prev prev[MAX_CTX];
	int nprev = 0;
	bool keys = tty;
	for (long it = 0; !g_quit && (!iterations || it < iterations); it++) {
		int n = collect(pid, views, MAX_CTX);
		draw(views, n, prev, &nprev);
		if (iterations && it + 1 >= iterations)
			break;
		/* Wait the interval, or until a key. */
		double until = now_s() + interval;
		while (!g_quit) {
			double left = until - now_s();
			if (left <= 0)
				break;
			struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
			if (poll(&pfd, keys ? 1 : 0, (int)(left * 1000) + 1) > 0) {
				char c;
				ssize_t got = read(STDIN_FILENO, &c, 1);
				if (got == 1 && (c == 'q' || c == 'Q'))
					g_quit = 1;
				else if (got <= 0)
					keys = false; /* end of input: just wait */
			}
		}
	}
	if (tty)
		tcsetattr(STDIN_FILENO, TCSANOW, &old);
	return CLI_EXIT_OK;
}
