/* SPDX-License-Identifier: MIT */
/*
 * uhmm — command-line tool: what this machine offers (`uhmm info`) and a
 * self-checking end-to-end demonstration on the dummy device (`uhmm demo`).
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "uhmm.h"
#include "cli.h"

struct cli_cmd {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *synopsis; /* arguments after the command name */
	const char *summary;  /* one line for `uhmm help` */
	const char *help;     /* description for `uhmm help CMD` */
};

static int cmd_help(int argc, char **argv);

/*
 * The dispatch table.  A subcommand is one row: its entry point lives in its
 * own file (tools/NAME.c, declared in cli.h and listed in tools/meson.build).
 */
static const struct cli_cmd commands[] = {
	{ "info", cmd_info, "[--json]",
	  "what this kernel offers: userfaultfd, features, fault mode",
	  "Report the kernel version, whether userfaultfd works here and how\n"
	  "(kernel-mode faults served too, or user-mode only, and why), each\n"
	  "userfaultfd feature uhmm uses, and the fault mode AUTO would pick.\n"
	  "  --json   the same facts as one JSON object on standard output\n"
	  "Exits 0 if userfaultfd works, 1 otherwise.\n" },
	{ "demo", cmd_demo, "[--size S] [--mode auto|thread|sigbus] [--type private|coherent|persistent]",
	  "migrate memory to a dummy device and back, verify every byte",
	  "Allocate S bytes of managed memory (default 256M), fill them with a\n"
	  "per-page pattern, migrate them to a dummy device, let the device\n"
	  "transform them in place, let a second dummy device read a tenth of\n"
	  "them (they come home through system memory), read them back on the\n"
	  "CPU (each page faults home) and verify every byte.  Prints pages\n"
	  "moved each way, faults, mirror invalidations,\n"
	  "time per phase and throughput.  Exits 1 on any mismatch or error.\n"
	  "\n"
	  "  -s, --size S   bytes to use: a number with an optional K/M/G/T suffix\n"
	  "                 (powers of 1024); rounded up to whole pages\n"
	  "  -m, --mode M   fault mode: auto (default: UHMM_FAULT_MODE, else the\n"
	  "                 best mode that works here), thread or sigbus\n"
	  "  -t, --type T   device memory: private (default: the round trip above),\n"
	  "                 coherent (the CPU works in place, 0 faults) or persistent\n"
	  "                 (mapped, never migrated, kept across contexts in a file);\n"
	  "                 see docs/USAGE.md\n" },
	{ "bench", cmd_bench, "[CASE...] [--cuda] [--size S] [--threads N] [--reps R] [--json FILE] [--quick] [--list]",
	  "measure fault and migration costs against same-run baselines",
	  "Run each benchmark case and, in the same run, its baseline (memcpy or\n"
	  "the kernel's own first-touch fault); print the median of R repetitions\n"
	  "with min/max, the ratio uhmm/baseline, the target and PASS/MISS\n"
	  "(targets are reported, never enforced: see docs/PERFORMANCE.md).\n"
	  "Exits 1 only if a case failed to run or lost data.\n"
	  "\n"
	  "  CASE...          cases to run (default: all but cuda-*; 'uhmm bench --list')\n"
	  "  -c, --cuda       the CUDA cases: GPU 0 vs the driver's own copies, managed\n"
	  "                   memory and cuMemAlloc (skipped, with the reason, without\n"
	  "                   a GPU)\n"
	  "  -s, --size S     bytes per case (default 1G, migrate-copy 256M; K/M/G/T\n"
	  "                   suffixes)\n"
	  "  -t, --threads N  threads for the 'threads' case (default 2) and for\n"
	  "                   'migrate-copy' (default: 1, then 2)\n"
	  "  -r, --reps R     repetitions per figure (default 5)\n"
	  "  -j, --json FILE  also write the results as JSON (bench/plot.sh plots it)\n"
	  "  -q, --quick      smoke run: 16 MiB, 3 repetitions (a few seconds)\n"
	  "  -l, --list       list the cases\n" },
	{ "stat", cmd_stat, "[PID] [--json]",
	  "one snapshot of the uhmm contexts of PID, or of every process",
	  "Print, for every uhmm context of process PID (default: of every\n"
	  "process of this user), its counters, its devices with the device\n"
	  "memory used and present, and each managed range's pages per state\n"
	  "(none, system, device, coherent, poisoned), read from the status\n"
	  "segment the library publishes in /dev/shm (see docs/USAGE.md; a\n"
	  "process started with UHMM_NO_STATUS=1, or whose context was opened\n"
	  "with UHMM_OPT_NO_STATUS, publishes none).  Segments of processes\n"
	  "that died are removed.\n"
	  "  -j, --json   the same as one JSON object on standard output\n"
	  "Exits 1 if PID was given and has no context.\n" },
	{ "top", cmd_top, "[PID] [--interval S] [--iterations N]",
	  "live view of the uhmm contexts of PID, or of every process",
	  "Like 'uhmm stat', redrawn in the terminal every S seconds: device\n"
	  "memory used per device and pages per state of each range as bars\n"
	  "(s system, D device, C coherent, X poisoned, . none), and the\n"
	  "rates of migrations, CPU and device faults and invalidations per\n"
	  "second since the last refresh.  q or Ctrl-C quits.\n"
	  "  -d, --interval S     seconds between refreshes (default 1)\n"
	  "  -n, --iterations N   stop after N refreshes\n" },
	{ "help", cmd_help, "[COMMAND]", "show this help, or the help of COMMAND",
	  "Show the list of commands, or the full help of COMMAND.\n" },
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static const struct cli_cmd *find_cmd(const char *name)
{
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static void print_synopsis(FILE *f, const struct cli_cmd *c)
{
	fprintf(f, "usage: uhmm %s%s%s\n", c->name, c->synopsis[0] ? " " : "", c->synopsis);
}

static void print_overview(FILE *f)
{
	fprintf(f,
	        "uhmm %d.%d.%d — Heterogeneous Memory Management in user space\n"
	        "\n"
	        "usage: uhmm COMMAND [OPTIONS]\n"
	        "\n"
	        "commands:\n",
	        UHMM_VERSION_MAJOR, UHMM_VERSION_MINOR, UHMM_VERSION_PATCH);
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  %-6s %s\n", commands[i].name, commands[i].summary);
	fprintf(f,
	        "\n"
	        "Run 'uhmm help COMMAND' or 'uhmm COMMAND --help' for details,\n"
	        "'uhmm --version' for the version.\n"
	        "Environment: UHMM_FAULT_MODE, UHMM_FAULT_AROUND, UHMM_NO_MOVE, UHMM_SPIN_US,\n"
	        "UHMM_FAULT_AHEAD, UHMM_CUDA_LIBRARY, UHMM_NO_STATUS (see README.md and uhmm(1)).\n");
}

void cli_help(FILE *f, const char *cmd)
{
	const struct cli_cmd *c = find_cmd(cmd);

	if (!c) {
		print_overview(f);
		return;
	}
	print_synopsis(f, c);
	fprintf(f, "\n%s", c->help);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
	const struct cli_cmd *c = cmd ? find_cmd(cmd) : NULL;
	va_list ap;

	fprintf(stderr, "uhmm%s%s: ", c ? " " : "", c ? c->name : "");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (c) {
		print_synopsis(stderr, c);
		fprintf(stderr, "Try 'uhmm help %s'.\n", c->name);
	} else {
		fprintf(stderr, "usage: uhmm COMMAND [OPTIONS]\nTry 'uhmm help'.\n");
	}
	return CLI_EXIT_USAGE;
}

int cli_parse_size(const char *s, size_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || !isdigit((unsigned char)s[0]))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -1;
	switch (toupper((unsigned char)*end)) {
	case '\0': break;
	case 'K': shift = 10; end++; break;
	case 'M': shift = 20; end++; break;
	case 'G': shift = 30; end++; break;
	case 'T': shift = 40; end++; break;
	default: return -1;
	}
	if (shift) {
		/* Accept "M", "MB", "MiB" (all powers of 1024). */
		if (strcmp(end, "") != 0 && strcasecmp(end, "B") != 0 && strcasecmp(end, "iB") != 0)
			return -1;
	} else if (*end != '\0' && strcasecmp(end, "B") != 0) {
		return -1;
	}
	if (v == 0 || v > (SIZE_MAX >> shift))
		return -1;
	*out = (size_t)v << shift;
	return 0;
}

const char *cli_fmt_bytes(char *buf, size_t len, size_t bytes)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	unsigned u = 0;

	while (v >= 1024.0 && u + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1024.0;
		u++;
	}
	if (u == 0 || v == (double)(uint64_t)v)
		snprintf(buf, len, "%.0f %s", v, units[u]);
	else
		snprintf(buf, len, "%.1f %s", v, units[u]);
	return buf;
}

static int cmd_help(int argc, char **argv)
{
	if (argc > 2)
		return cli_usage_error("help", "too many arguments");
	if (argc == 2) {
		if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
			cli_help(stdout, "help");
			return CLI_EXIT_OK;
		}
		if (!find_cmd(argv[1]))
			return cli_usage_error("help", "unknown command '%s'", argv[1]);
		cli_help(stdout, argv[1]);
		return CLI_EXIT_OK;
	}
	print_overview(stdout);
	return CLI_EXIT_OK;
}

int main(int argc, char **argv)
{
	const struct cli_cmd *c;

	if (argc < 2) {
		print_overview(stderr);
		return CLI_EXIT_USAGE;
	}
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
		print_overview(stdout);
		return CLI_EXIT_OK;
	}
	if (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0) {
		printf("uhmm %d.%d.%d\n", UHMM_VERSION_MAJOR, UHMM_VERSION_MINOR,
		       UHMM_VERSION_PATCH);
		return CLI_EXIT_OK;
	}
	if (argv[1][0] == '-')
		return cli_usage_error(NULL, "unknown option '%s'", argv[1]);
	c = find_cmd(argv[1]);
	if (!c)
		return cli_usage_error(NULL, "unknown command '%s'", argv[1]);
	return c->run(argc - 1, argv + 1);
}
