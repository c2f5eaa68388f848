/* SPDX-License-Identifier: MIT */
/*
 * `uhmm bench`: each case measures uhmm and, in the same run and the same
 * repetitions, its baseline (memcpy, the kernel's own first-touch fault),
 * and prints the median with min/max and the ratio against the target of
 * docs/PERFORMANCE.md.  Targets are reported, never enforced: the exit
 * status only says whether every case ran and verified its data.
 *
 * This file is the framework (options, statistics, table, JSON); the cases
 * live in bench_cases.c, bench_copy.c and bench_cuda.c.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "uhmm.h"
#include "cli.h"
#include "bench.h"

struct bench_opts bopt;

static struct row **g_rows;
static size_t g_nrows, g_caprows;
static bool g_tty;
static int g_errors;

struct bcase {
	const char *name;
	int (*run)(void);
	const char *what;
	bool gpu; /* needs a GPU: run with --cuda or by name, not by default */
};

static const struct bcase cases[] = {
	{ "migrate-to-device", case_migrate_to_device, "uhmm_migrate sys -> dummy device vs memcpy", false },
	{ "migrate-to-system", case_migrate_to_system, "uhmm_migrate dummy device -> sys vs memcpy", false },
	{ "fault-latency", case_fault_latency, "one CPU read of a device page, fault-around off, vs kernel first touch", false },
	{ "fault-stream", case_fault_stream, "sequential CPU read of device-resident memory vs memcpy", false },
	{ "fault-random", case_fault_random, "random-order CPU read of device-resident memory vs kernel first touch", false },
	{ "device-fault", case_device_fault, "dummy device reads never-touched / present memory", false },
	{ "threads", case_threads, "N threads faulting disjoint parts vs 1 thread", false },
	{ "huge", case_huge, "2 MiB-aligned THP-backed migration both ways vs memcpy", false },
	{ "metadata", case_metadata, "RSS cost of a 1 TiB managed range with SIZE touched", false },
	{ "granule", case_granule, "sweep: fault-around 1..512 pages, migration 4 KiB..2 MiB", false },
	{ "migrate-copy", case_migrate_copy, "uhmm_migrate both ways via a copy device vs memcpy, UFFDIO_COPY", false },
	{ "cuda-migrate", case_cuda_migrate, "uhmm_migrate host <-> GPU, prefetch vs cuMemcpy from pinned memory", true },
	{ "cuda-fault-back", case_cuda_fault_back, "CPU reads GPU-written data vs cuMemAllocManaged", true },
	{ "cuda-saxpy", case_cuda_saxpy, "SAXPY 1 and 8 GiB on uhmm memory vs cuMemAlloc", true },
};
#define NCASES (sizeof(cases) / sizeof(cases[0]))

double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void series_add(struct series *s, double v)
{
	if (s->n < BENCH_MAX_REPS)
		s->v[s->n++] = v;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static struct stat3 stat_of(const double *v, int n)
{
	struct stat3 s = { 0, 0, 0 };
	double t[BENCH_MAX_REPS];

	if (n <= 0)
		return s;
	memcpy(t, v, (size_t)n * sizeof(*t));
	qsort(t, (size_t)n, sizeof(*t), cmp_double);
	s.min = t[0];
	s.max = t[n - 1];
	s.med = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
	return s;
}

void bench_error(const char *cname, const char *fmt, ...)
{
	va_list ap;

	if (g_tty)
		fprintf(stderr, "\r\033[K");
	fprintf(stderr, "uhmm bench: %s: ", cname);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	g_errors++;
}

void progress(const char *cname, const char *variant, int rep, int reps)
{
	if (g_tty) {
		fprintf(stderr, "\r\033[K  %s %s: %s %d/%d", cname, variant,
		        rep < 0 ? "warm-up" : "rep", rep < 0 ? 0 : rep + 1, reps);
		fflush(stderr);
	} else if (rep < 0) {
		fprintf(stderr, "uhmm bench: %s %s ...\n", cname, variant);
	}
}

struct row *row_new(const char *cname, const char *variant, enum bench_unit u,
                    const char *base_name)
{
	struct row *r = calloc(1, sizeof(*r));

	if (!r) {
		perror("uhmm bench");
		exit(CLI_EXIT_FAIL);
	}
	snprintf(r->cname, sizeof(r->cname), "%s", cname);
	snprintf(r->variant, sizeof(r->variant), "%s", variant);
	snprintf(r->base_name, sizeof(r->base_name), "%s", base_name ? base_name : "");
	r->unit = u;
	return r;
}

static const char *unit_name(enum bench_unit u)
{
	switch (u) {
	case U_GBPS: return "GB/s";
	case U_US: return "us";
	case U_MS: return "ms";
	case U_BPP: return "B/page";
	case U_MIB: return "MiB";
	case U_PCT: return "%";
	}
	return "";
}

static const char *fmt_num(char *buf, size_t len, double v)
{
	if (v != 0 && (v < 0.1 && v > -0.1))
		snprintf(buf, len, "%.3f", v);
	else if (v >= 1000 || v <= -1000)
		snprintf(buf, len, "%.0f", v);
	else
		snprintf(buf, len, "%.2f", v);
	return buf;
}

/* "12.34 [11.90-12.80]" */
static const char *fmt_stat(char *buf, size_t len, struct stat3 s)
{
	char a[24], b[24], c[24];

	snprintf(buf, len, "%s [%s-%s]", fmt_num(a, sizeof(a), s.med), fmt_num(b, sizeof(b), s.min),
	         fmt_num(c, sizeof(c), s.max));
	return buf;
}

static void print_header(void)
{
	printf("%-18s %-24s %-6s %-24s %-16s %-24s %-20s %-9s %s\n", "case", "variant", "unit",
	       "uhmm median [min-max]", "baseline", "baseline median [min-max]",
	       "ratio median [min-max]", "target", "result");
}

static void print_row(const struct row *r)
{
	char v[64], b[64], q[64], t[24];
	bool hb = r->base_name[0] != 0;

	if (r->cmp == CMP_NONE)
		snprintf(t, sizeof(t), "-");
	else
		snprintf(t, sizeof(t), "%s%s%g%s%s", r->info ? "(" : "", r->cmp == CMP_GE ? ">=" : "<=",
		         r->target, hb ? "x" : "", r->info ? ")" : "");
	printf("%-18s %-24s %-6s %-24s %-16s %-24s %-20s %-9s %s\n", r->cname, r->variant,
	       unit_name(r->unit), fmt_stat(v, sizeof(v), r->sv), hb ? r->base_name : "-",
	       hb ? fmt_stat(b, sizeof(b), r->sb) : "-", hb ? fmt_stat(q, sizeof(q), r->sr) : "-", t,
	       r->status);
	if (r->note[0])
		printf("%-18s %-24s   note: %s\n", "", "", r->note);
	fflush(stdout);
}

void row_finish(struct row *r, enum bench_cmp cmp, double target, bool info)
{
	double ratio[BENCH_MAX_REPS];
	int n = r->val.n < r->base.n ? r->val.n : r->base.n;
	bool hb = r->base_name[0] != 0;

	r->cmp = cmp;
	r->target = target;
	r->info = info;
	r->sv = stat_of(r->val.v, r->val.n);
	if (hb) {
		r->sb = stat_of(r->base.v, r->base.n);
		for (int i = 0; i < n; i++)
			ratio[i] = r->base.v[i] > 0 ? r->val.v[i] / r->base.v[i] : 0;
		r->sr = stat_of(ratio, n);
	}
	if (r->val.n == 0) {
		r->status = "ERROR";
	} else if (cmp == CMP_NONE || info) {
		r->status = info ? "info" : "-";
	} else {
		double x = hb ? r->sr.med : r->sv.med;
		bool ok = cmp == CMP_GE ? x >= target : x <= target;
		r->status = ok ? "PASS" : "MISS";
	}
	if (g_tty)
		fprintf(stderr, "\r\033[K");
	print_row(r);
	if (g_nrows == g_caprows) {
		size_t cap = g_caprows ? g_caprows * 2 : 64;
		struct row **nr = realloc(g_rows, cap * sizeof(*nr));
		if (!nr) {
			perror("uhmm bench");
			exit(CLI_EXIT_FAIL);
		}
		g_rows = nr;
		g_caprows = cap;
	}
	g_rows[g_nrows++] = r;
}

/* ---- the machine ---- */

static void cpu_model(char *buf, size_t len)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[512];

	snprintf(buf, len, "unknown");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "model name", 10) == 0) {
			char *c = strchr(line, ':');
			if (c) {
				c++;
				while (*c == ' ' || *c == '\t')
					c++;
				c[strcspn(c, "\n")] = 0;
				snprintf(buf, len, "%s", c);
			}
			break;
		}
	}
	fclose(f);
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void json_stat(FILE *f, const char *key, struct stat3 s, const struct series *ser)
{
	fprintf(f, "\"%s\": {\"median\": %.6g, \"min\": %.6g, \"max\": %.6g, \"samples\": [", key,
	        s.med, s.min, s.max);
	for (int i = 0; ser && i < ser->n; i++)
		fprintf(f, "%s%.6g", i ? ", " : "", ser->v[i]);
	fprintf(f, "]}");
}

static int write_json(const char *path, int argc, char **argv, const char *cpu,
                      const struct utsname *u, const char *auto_mode)
{
	FILE *f = fopen(path, "w");

	if (!f) {
		fprintf(stderr, "uhmm bench: %s: %s\n", path, strerror(errno));
		return -1;
	}
	fprintf(f, "{\n  \"tool\": \"uhmm bench\",\n  \"version\": \"%d.%d.%d\",\n",
	        UHMM_VERSION_MAJOR, UHMM_VERSION_MINOR, UHMM_VERSION_PATCH);
	fprintf(f, "  \"command\": ");
	{
		char cmd[1024] = "uhmm";
		for (int i = 0; i < argc; i++) {
			size_t l = strlen(cmd);
			snprintf(cmd + l, sizeof(cmd) - l, " %s", argv[i]);
		}
		json_str(f, cmd);
	}
	fprintf(f, ",\n  \"machine\": {\"kernel\": ");
	json_str(f, u->release);
	fprintf(f, ", \"machine\": ");
	json_str(f, u->machine);
	fprintf(f, ", \"cpu\": ");
	json_str(f, cpu);
	fprintf(f, ", \"vcpus\": %ld, \"auto_mode\": ", sysconf(_SC_NPROCESSORS_ONLN));
	json_str(f, auto_mode);
	fprintf(f, "},\n  \"size\": %zu, \"reps\": %d, \"threads\": %u, \"quick\": %s,\n",
	        bopt.size, bopt.reps, bopt.threads, bopt.quick ? "true" : "false");
	fprintf(f, "  \"results\": [\n");
	for (size_t i = 0; i < g_nrows; i++) {
		const struct row *r = g_rows[i];
		fprintf(f, "    {\"case\": ");
		json_str(f, r->cname);
		fprintf(f, ", \"variant\": ");
		json_str(f, r->variant);
		fprintf(f, ", \"unit\": ");
		json_str(f, unit_name(r->unit));
		fprintf(f, ", ");
		json_stat(f, "value", r->sv, &r->val);
		if (r->base_name[0]) {
			fprintf(f, ", \"baseline_name\": ");
			json_str(f, r->base_name);
			fprintf(f, ", ");
			json_stat(f, "baseline", r->sb, &r->base);
			fprintf(f, ", ");
			json_stat(f, "ratio", r->sr, NULL);
		}
		if (r->cmp != CMP_NONE)
			fprintf(f, ", \"target\": {\"op\": \"%s\", \"value\": %g, \"judged\": %s}",
			        r->cmp == CMP_GE ? ">=" : "<=", r->target, r->info ? "false" : "true");
		if (r->granule) {
			fprintf(f, ", \"sweep\": ");
			json_str(f, r->sweep);
			fprintf(f, ", \"granule_bytes\": %zu", r->granule);
		}
		if (r->note[0]) {
			fprintf(f, ", \"note\": ");
			json_str(f, r->note);
		}
		fprintf(f, ", \"status\": ");
		json_str(f, r->status);
		fprintf(f, "}%s\n", i + 1 < g_nrows ? "," : "");
	}
	fprintf(f, "  ]\n}\n");
	if (fclose(f)) {
		fprintf(stderr, "uhmm bench: %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

static const char *mode_str(enum uhmm_fault_mode m)
{
	return m == UHMM_FAULT_THREAD ? "thread" : m == UHMM_FAULT_SIGBUS ? "sigbus" : "auto";
}

static void list_cases(FILE *f)
{
	fprintf(f, "cases (default: all but the cuda-* ones, in this order; --cuda: the cuda-* ones):\n");
	for (size_t i = 0; i < NCASES; i++)
		fprintf(f, "  %-18s %s\n", cases[i].name, cases[i].what);
}

int cmd_bench(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "size", required_argument, NULL, 's' },
		{ "threads", required_argument, NULL, 't' },
		{ "reps", required_argument, NULL, 'r' },
		{ "json", required_argument, NULL, 'j' },
		{ "quick", no_argument, NULL, 'q' },
		{ "cuda", no_argument, NULL, 'c' },
		{ "list", no_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *json = NULL;
	bool have_size = false, have_reps = false, cuda = false;
	bool want[NCASES];
	int c, nwant = 0;
	int xargc = argc;
	char **xargv = argv;

	memset(want, 0, sizeof(want));
	bopt.size = 1ul << 30;
	bopt.threads = 2;
	bopt.reps = 5;
	bopt.quick = false;
	bopt.size_set = bopt.threads_set = false;
	optind = 1;
	while ((c = getopt_long(argc, argv, "s:t:r:j:qclh", lo, NULL)) != -1) {
		switch (c) {
		case 's':
			if (cli_parse_size(optarg, &bopt.size) || bopt.size < (1ul << 20))
				return cli_usage_error("bench", "bad size '%s' (at least 1M)", optarg);
			bopt.size = (bopt.size + (1ul << 20) - 1) & ~((1ul << 20) - 1);
			have_size = true;
			break;
		case 't': {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < 1 || v > 64)
				return cli_usage_error("bench", "bad thread count '%s' (1..64)", optarg);
			bopt.threads = (unsigned)v;
			bopt.threads_set = true;
			break;
		}
		case 'r': {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < 1 || v > BENCH_MAX_REPS)
				return cli_usage_error("bench", "bad repetition count '%s' (1..%d)", optarg,
				                       BENCH_MAX_REPS);
			bopt.reps = (int)v;
			have_reps = true;
			break;
		}
		case 'j':
			json = optarg;
			break;
		case 'q':
			bopt.quick = true;
			break;
		case 'c':
			cuda = true;
			break;
		case 'l':
			list_cases(stdout);
			return CLI_EXIT_OK;
		case 'h':
			cli_help(stdout, "bench");
			list_cases(stdout);
			return CLI_EXIT_OK;
		default:
			return CLI_EXIT_USAGE;
		}
	}
	for (int i = optind; i < argc; i++) {
		size_t k;
		if (strcmp(argv[i], "all") == 0) {
			for (k = 0; k < NCASES; k++)
				if (!cases[k].gpu) {
					want[k] = true;
					nwant++;
				}
			continue;
		}
		for (k = 0; k < NCASES; k++)
			if (strcmp(argv[i], cases[k].name) == 0)
				break;
		if (k == NCASES) {
			cli_usage_error("bench", "unknown case '%s'", argv[i]);
			list_cases(stderr);
			return CLI_EXIT_USAGE;
		}
		want[k] = true;
		nwant++;
	}
	for (size_t k = 0; k < NCASES; k++)
		if (cuda && cases[k].gpu) {
			want[k] = true;
			nwant++;
		}
	if (!nwant)
		for (size_t k = 0; k < NCASES; k++)
			want[k] = !cases[k].gpu;
	if (bopt.quick) {
		if (!have_size)
			bopt.size = 16ul << 20;
		if (!have_reps)
			bopt.reps = 3;
	}
	bopt.size_set = have_size;
	g_tty = isatty(STDERR_FILENO);

	struct uhmm_sysinfo si = UHMM_SYSINFO_INIT;
	struct utsname u;
	char cpu[128], sz[32];
	const char *auto_mode = "unknown";

	uname(&u);
	cpu_model(cpu, sizeof(cpu));
	if (uhmm_sysinfo_get(&si) == 0)
		auto_mode = mode_str(si.auto_mode);
	if (uhmm_sysinfo_get(&si) != 0 || !(si.caps & UHMM_SYS_UFFD)) {
		fprintf(stderr, "uhmm bench: userfaultfd does not work here (see 'uhmm info')\n");
		return CLI_EXIT_FAIL;
	}
	printf("uhmm bench: %s %s, %s, %ld vCPUs; size %s, %d reps (median [min-max]), "
	       "AUTO = %s mode\n",
	       u.sysname, u.release, cpu, sysconf(_SC_NPROCESSORS_ONLN),
	       cli_fmt_bytes(sz, sizeof(sz), bopt.size), bopt.reps, auto_mode);
	printf("ratio = uhmm / baseline per repetition (GB/s: higher is better; us, ms: lower is "
	       "better)\n\n");
	print_header();
	fflush(stdout);

	double t0 = now_s();
	for (size_t k = 0; k < NCASES; k++) {
		if (!want[k])
			continue;
		if (cases[k].run())
			g_errors++;
	}
	if (g_tty)
		fprintf(stderr, "\r\033[K");

	size_t pass = 0, miss = 0, judged = 0;
	for (size_t i = 0; i < g_nrows; i++) {
		const char *s = g_rows[i]->status;
		if (!strcmp(s, "PASS") || !strcmp(s, "MISS")) {
			judged++;
			pass += !strcmp(s, "PASS");
			miss += !strcmp(s, "MISS");
		}
	}
	printf("\n%zu targets judged: %zu PASS, %zu MISS; %zu rows in %.1f s%s\n", judged, pass, miss,
	       g_nrows, now_s() - t0, g_errors ? "; ERRORS (see stderr)" : "");
	if (json && write_json(json, xargc, xargv, cpu, &u, auto_mode))
		g_errors++;
	for (size_t i = 0; i < g_nrows; i++)
		free(g_rows[i]);
	free(g_rows);
	g_rows = NULL;
	g_nrows = g_caprows = 0;
	return g_errors ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}
