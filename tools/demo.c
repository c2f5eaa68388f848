/* SPDX-License-Identifier: MIT */
/*
 * `uhmm demo`: the whole HMM round trip on the dummy device, self-checking.
 *
 *   1. fill      the CPU writes a per-page pattern (first touch: zero-fill faults)
 *   2. migrate   uhmm_migrate() moves every page into unaddressable device memory
 *   3. device    the device reads each batch in place, checks it, transforms it
 *                and writes it back (still in device memory)
 *   4. device B  a second dummy device reads a sample of the pages that live
 *                on the first one: they come back through system memory (the
 *                first device's mirror is invalidated first); B checks them
 *   5. verify    the CPU reads every page: each access faults the page home
 *                (the pages B touched are already home); every byte is
 *                compared with the expected value
 *
 * --type coherent: the same buffer in coherent device memory (DEVICE |
 * ALLOW_MIGRATION): after migration the CPU reads, checks and transforms
 * every page in place with no CPU fault, the device sees the CPU's writes,
 * an explicit migration brings the granules back, the CPU verifies.
 *
 * --type persistent: persistent device memory (DEVICE only) over a file in
 * /dev/shm: the CPU maps it (uhmm_devmem_map) and writes it in place, a
 * migration attempt skips every page, the context is closed, and a new
 * context and device over the same file verify the data.
 *
 * Exits 1 on any mismatch or library error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "uhmm.h"
#include "cli.h"

#define DEFAULT_SIZE  (256ul << 20)
#define BATCH_PAGES   512    /* pages per device operation */
#define QUERY_PAGES   4096   /* pages per uhmm_query call */
#define MAX_REPORTED  8      /* mismatches printed in detail */
#define DEVICE_XOR    UINT64_C(0xa5a5a5a5a5a5a5a5) /* the device op: every byte ^= 0xa5 */
#define PAGE_MIX      UINT64_C(0x9e3779b97f4a7c15)

/*
 * Word w of page pg.  pg * odd constant is a bijection, so two pages never
 * hold the same data: a page that lands at the wrong address is caught.
 */
static inline uint64_t pattern(uint64_t pg, uint64_t w)
{
	return (pg * PAGE_MIX) ^ (w << 3) ^ UINT64_C(0x0123456789abcdef);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
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

static const char *state_name(enum uhmm_state s)
{
	switch (s) {
	case UHMM_STATE_NONE: return "none";
	case UHMM_STATE_SYSTEM: return "system";
	case UHMM_STATE_DEVICE: return "device";
	case UHMM_STATE_DEVICE_COHERENT: return "device-coherent";
	case UHMM_STATE_POISONED: return "poisoned";
	}
	return "?";
}

/* Does UHMM_FAULT_MODE replace AUTO (as the library reads it)? */
static int env_mode(void)
{
	const char *m = getenv("UHMM_FAULT_MODE");

	return m && (strcasecmp(m, "thread") == 0 || strcasecmp(m, "sigbus") == 0);
}

#define NSTATES 5

/* Count the pages of [p, p + npages) in each state; prints on failure. */
static int count_states(struct uhmm *h, const char *p, size_t npages, size_t pagesz,
                        size_t counts[NSTATES])
{
	static struct uhmm_page_info info[QUERY_PAGES];

	memset(counts, 0, NSTATES * sizeof(counts[0]));
	for (size_t i = 0; i < npages; i += QUERY_PAGES) {
		size_t n = npages - i < QUERY_PAGES ? npages - i : QUERY_PAGES;
		int rc = uhmm_query(h, p + i * pagesz, n, info);

		if (rc < 0) {
			fprintf(stderr, "uhmm demo: uhmm_query: %s\n", strerror(-rc));
			return rc;
		}
		for (size_t j = 0; j < n; j++)
			if ((unsigned)info[j].state < NSTATES)
				counts[info[j].state]++;
	}
	return 0;
}

static void print_states(const char *when, const size_t counts[NSTATES])
{
	int first = 1;

	printf("  %-22s", when);
	for (int s = 0; s < NSTATES; s++) {
		if (!counts[s])
			continue;
		printf("%s%zu %s", first ? "" : ", ", counts[s], state_name((enum uhmm_state)s));
		first = 0;
	}
	printf("%s\n", first ? "(no pages)" : "");
}

struct phase {
	const char *name;
	double secs;
	struct uhmm_stats d; /* counters during the phase */
};

static void stats_delta(struct uhmm_stats *d, const struct uhmm_stats *a,
                        const struct uhmm_stats *b)
{
	d->cpu_faults = b->cpu_faults - a->cpu_faults;
	d->pages_to_device = b->pages_to_device - a->pages_to_device;
	d->pages_to_system = b->pages_to_system - a->pages_to_system;
	d->device_faults = b->device_faults - a->device_faults;
	d->invalidations = b->invalidations - a->invalidations;
	d->pages_skipped = b->pages_skipped - a->pages_skipped;
	d->pages_zero_filled = b->pages_zero_filled - a->pages_zero_filled;
	d->move_calls = b->move_calls - a->move_calls;
	d->copy_calls = b->copy_calls - a->copy_calls;
	d->fallback_pages = b->fallback_pages - a->fallback_pages;
	d->deferred_faults = b->deferred_faults - a->deferred_faults;
	d->events = b->events - a->events;
	d->pages_poisoned = b->pages_poisoned - a->pages_poisoned;
}

enum demo_type { TYPE_PRIVATE, TYPE_COHERENT, TYPE_PERSISTENT };

struct demo {
	struct uhmm *h;
	struct uhmm_device *dev;
	char *mem;
	size_t size, pagesz, npages, words; /* words per page */
	struct uhmm_stats last;
	double t0;
	struct phase phases[6];
	int nphases;
	uint64_t device_bad_pages, device_bad_bytes; /* seen by the device in step 3 */
	uint64_t cpu_bad_pages, cpu_bad_bytes;       /* seen by the CPU in step 5 */
	uint64_t b_bad_pages, b_bad_bytes;           /* seen by device B in step 4 */
	int readback_phase;                          /* 1 + index of the CPU read-back phase, 0 none */
	int reported;
};

static void phase_begin(struct demo *d)
{
	d->last.sz = sizeof(d->last);
	uhmm_stats_get(d->h, &d->last);
	d->t0 = now_s();
}

static void phase_end(struct demo *d, const char *name)
{
	double t1 = now_s();
	struct uhmm_stats s = UHMM_STATS_INIT;
	struct phase *ph = &d->phases[d->nphases++];

	uhmm_stats_get(d->h, &s);
	ph->name = name;
	ph->secs = t1 - d->t0;
	stats_delta(&ph->d, &d->last, &s);
}

static unsigned bytes_differing(uint64_t a, uint64_t b)
{
	uint64_t x = a ^ b;
	unsigned n = 0;

	for (int i = 0; i < 8; i++, x >>= 8)
		n += (x & 0xff) != 0;
	return n;
}

static void report_mismatch(struct demo *d, const char *who, size_t pg, size_t w,
                            uint64_t want, uint64_t got)
{
	if (d->reported++ >= MAX_REPORTED)
		return;
	fprintf(stderr,
	        "uhmm demo: %s mismatch: page %zu, offset %zu: expected 0x%016" PRIx64
	        ", got 0x%016" PRIx64 "\n", who, pg, w * 8, want, got);
}

/* Page pg (its words at q) must hold pattern(pg, w) ^ expect: mismatches
 * are reported and their bytes counted.  Returns 1 if the page was bad. */
static unsigned check_page(struct demo *d, const char *who, size_t pg, const uint64_t *q,
                           uint64_t expect, uint64_t *bad_bytes)
{
	unsigned bad = 0;

	for (size_t w = 0; w < d->words; w++) {
		uint64_t want = pattern(pg, w) ^ expect;

		if (q[w] != want) {
			report_mismatch(d, who, pg, w, want, q[w]);
			*bad_bytes += bytes_differing(want, q[w]);
			bad = 1;
		}
	}
	return bad;
}

/*
 * Device dev reads pages [0, npages) in place, a batch at a time; each page
 * must hold pattern ^ expect (bad pages and bytes added to the counters).
 * With apply, each page is XORed with it and written back.  Returns 0 or a
 * negative errno.
 */
static int device_pass_on(struct demo *d, struct uhmm_device *dev, const char *who,
                          size_t npages, uint64_t *buf, uint64_t expect, uint64_t apply,
                          struct uhmm_dummy_counters *c, uint64_t *bad_pages,
                          uint64_t *bad_bytes)
{
	for (size_t pg0 = 0; pg0 < npages; pg0 += BATCH_PAGES) {
		size_t n = npages - pg0 < BATCH_PAGES ? npages - pg0 : BATCH_PAGES;
		char *addr = d->mem + pg0 * d->pagesz;
		int rc = uhmm_dummy_read(dev, addr, buf, n, c);

		if (rc < 0) {
			fprintf(stderr, "uhmm demo: %s: uhmm_dummy_read at page %zu: %s\n", who, pg0,
			        strerror(-rc));
			return rc;
		}
		for (size_t i = 0; i < n; i++) {
			uint64_t *q = buf + i * d->words;

			*bad_pages += check_page(d, who, pg0 + i, q, expect, bad_bytes);
			for (size_t w = 0; apply && w < d->words; w++)
				q[w] ^= apply;
		}
		if (!apply)
			continue;
		rc = uhmm_dummy_write(dev, addr, buf, n, c);
		if (rc < 0) {
			fprintf(stderr, "uhmm demo: %s: uhmm_dummy_write at page %zu: %s\n", who, pg0,
			        strerror(-rc));
			return rc;
		}
	}
	return 0;
}

/* Step 1: the CPU writes the pattern; each first touch is a zero-fill fault. */
static void step_fill(struct demo *d)
{
	for (size_t pg = 0; pg < d->npages; pg++) {
		uint64_t *q = (uint64_t *)(d->mem + pg * d->pagesz);

		for (size_t w = 0; w < d->words; w++)
			q[w] = pattern(pg, w);
	}
}

/*
 * Step 3: the device operation.  uhmm_dummy_read/write go through the
 * device's own page table: pages that live in its memory are accessed in
 * place (no migration, no CPU fault).
 */
static int step_device(struct demo *d, uint64_t *buf)
{
	struct uhmm_dummy_counters c = { 0, 0 };

	return device_pass_on(d, d->dev, "device read", d->npages, buf, 0, DEVICE_XOR, &c,
	                      &d->device_bad_pages, &d->device_bad_bytes);
}

/*
 * Step 4: a second dummy device B reads the first `sample` pages, which live
 * in device A's private memory.  B's device fault (uhmm_range_fault) brings
 * each page home to system memory (A's mirror is invalidated first, and A's
 * page frees); B then reads it through its own page table and checks it.
 * Returns the number of pages B read, or a negative errno.
 */
static int step_second_device(struct demo *d, struct uhmm_device *b, uint64_t *buf,
                              size_t sample, struct uhmm_dummy_counters *c)
{
	return device_pass_on(d, b, "device B read", sample, buf, DEVICE_XOR, 0, c,
	                      &d->b_bad_pages, &d->b_bad_bytes);
}

static uint64_t cpu_pass(struct demo *d, const char *who, uint64_t expect, uint64_t apply);

/* Step 5: the CPU reads every byte; the first access to a page faults it home. */
static void step_verify(struct demo *d)
{
	cpu_pass(d, "CPU read-back", DEVICE_XOR, 0);
}

static void print_phases(const struct demo *d)
{
	printf("\n  %-30s %10s %10s %10s %10s %10s %10s\n", "phase", "time", "GB/s", "CPU faults",
	       "to device", "to system", "dev faults");
	for (int i = 0; i < d->nphases; i++) {
		const struct phase *ph = &d->phases[i];
		double gbs = ph->secs > 0 ? (double)d->size / ph->secs / 1e9 : 0.0;

		printf("  %-30s %7.1f ms %10.2f %10" PRIu64 " %10" PRIu64 " %10" PRIu64
		       " %10" PRIu64 "\n", ph->name, ph->secs * 1e3, gbs, ph->d.cpu_faults,
		       ph->d.pages_to_device, ph->d.pages_to_system, ph->d.device_faults);
	}
	printf("  (GB/s = %zu bytes / phase time, 1 GB = 10^9 bytes)\n", d->size);
}

static void print_report(const struct demo *d, const struct uhmm_stats *tot,
                         const struct uhmm_dummy_counters *dc)
{
	print_phases(d);

	printf("\ncounters (uhmm_stats_get, whole run)\n");
	printf("  pages moved to device      %" PRIu64 "\n", tot->pages_to_device);
	printf("  pages moved to system      %" PRIu64 "\n", tot->pages_to_system);
	printf("  CPU faults served          %" PRIu64 " (%" PRIu64 " pages zero-filled, %" PRIu64
	       " retried on a busy page)\n", tot->cpu_faults, tot->pages_zero_filled,
	       tot->deferred_faults);
	if (tot->cpu_faults && tot->pages_to_system && d->readback_phase) {
		const struct phase *rb = &d->phases[d->readback_phase - 1];

		printf("  pages per fault (home)     %.1f\n", (double)rb->d.pages_to_system /
		       (double)(rb->d.cpu_faults ? rb->d.cpu_faults : 1));
	}
	printf("  device fault rounds        %" PRIu64 "\n", tot->device_faults);
	printf("  kernel calls               %" PRIu64 " UFFDIO_MOVE, %" PRIu64
	       " copy; %" PRIu64 " pages by copy + unmap fallback\n",
	       tot->move_calls, tot->copy_calls, tot->fallback_pages);
	printf("  pages skipped              %" PRIu64 "\n", tot->pages_skipped);
	printf("  userfaultfd events         %" PRIu64 ", mirror invalidations %" PRIu64 "\n",
	       tot->events, tot->invalidations);
	printf("  dummy device               %" PRIu64 " pages copied, %" PRIu64
	       " device fault rounds\n", dc->cpages, dc->faults);
}

static int parse_args(int argc, char **argv, size_t *size, enum uhmm_fault_mode *mode,
                      enum demo_type *type)
{
	static const struct option longopts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "mode", required_argument, NULL, 'm' },
		{ "type", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":s:m:t:h", longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (cli_parse_size(optarg, size) < 0)
				return cli_usage_error("demo", "invalid size '%s'", optarg);
			break;
		case 'm':
			if (strcmp(optarg, "auto") == 0)
				*mode = UHMM_FAULT_AUTO;
			else if (strcmp(optarg, "thread") == 0)
				*mode = UHMM_FAULT_THREAD;
			else if (strcmp(optarg, "sigbus") == 0)
				*mode = UHMM_FAULT_SIGBUS;
			else
				return cli_usage_error("demo", "invalid mode '%s' (auto, thread or sigbus)",
				                       optarg);
			break;
		case 't':
			if (strcmp(optarg, "private") == 0)
				*type = TYPE_PRIVATE;
			else if (strcmp(optarg, "coherent") == 0)
				*type = TYPE_COHERENT;
			else if (strcmp(optarg, "persistent") == 0)
				*type = TYPE_PERSISTENT;
			else
				return cli_usage_error("demo",
				                       "invalid type '%s' (private, coherent or persistent)",
				                       optarg);
			break;
		case 'h':
			cli_help(stdout, "demo");
			return -1;
		case ':':
			return cli_usage_error("demo", "option '%s' needs an argument", argv[optind - 1]);
		default:
			if (optopt)
				return cli_usage_error("demo", "unknown option '-%c'", optopt);
			return cli_usage_error("demo", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error("demo", "unexpected argument '%s'", argv[optind]);
	return 0;
}

/* ---- --type coherent and --type persistent ---- */

static int open_ctx(enum uhmm_fault_mode mode, struct uhmm **h)
{
	struct uhmm_options opts = UHMM_OPTIONS_INIT;
	int rc;

	memset(&opts, 0, sizeof(opts));
	opts.sz = sizeof(opts);
	opts.fault_mode = mode;
	rc = uhmm_open(&opts, h);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_open: %s\n", strerror(-rc));
		fprintf(stderr, "uhmm demo: run 'uhmm info' to see whether userfaultfd works here\n");
	}
	return rc;
}

static void print_mode(const struct demo *d, enum uhmm_fault_mode mode)
{
	printf("  fault mode %s%s", mode_name(uhmm_fault_mode(d->h)),
	       mode != UHMM_FAULT_AUTO ? "" :
	       env_mode() ? " (from UHMM_FAULT_MODE)" : " (chosen by AUTO)");
}

/*
 * One CPU pass over every page: word w of page pg must be
 * pattern(pg, w) ^ expect; it is then XORed with apply (0: read only).
 * Returns the number of bad pages.
 */
static uint64_t cpu_pass(struct demo *d, const char *who, uint64_t expect, uint64_t apply)
{
	uint64_t bad_pages = 0;

	for (size_t pg = 0; pg < d->npages; pg++) {
		uint64_t *q = (uint64_t *)(d->mem + pg * d->pagesz);

		bad_pages += check_page(d, who, pg, q, expect, &d->cpu_bad_bytes);
		for (size_t w = 0; apply && w < d->words; w++)
			q[w] ^= apply;
	}
	d->cpu_bad_pages += bad_pages;
	return bad_pages;
}

/* The device reads every page in place and compares with pattern ^ expect. */
static int device_pass(struct demo *d, uint64_t *buf, uint64_t expect)
{
	struct uhmm_dummy_counters c = { 0, 0 };

	return device_pass_on(d, d->dev, "device read", d->npages, buf, expect, 0, &c,
	                      &d->device_bad_pages, &d->device_bad_bytes);
}

/* All npages pages in state st?  Prints the states under `when`. */
static int expect_states(struct demo *d, const char *when, enum uhmm_state st)
{
	size_t counts[NSTATES];

	if (count_states(d->h, d->mem, d->npages, d->pagesz, counts) < 0)
		return -1;
	print_states(when, counts);
	if (counts[st] != d->npages) {
		fprintf(stderr, "uhmm demo: %s: expected all %zu pages %s\n", when, d->npages,
		        state_name(st));
		return -1;
	}
	return 0;
}

static int demo_coherent(struct demo *d, enum uhmm_fault_mode mode)
{
	struct uhmm_dummy_options dopts = UHMM_DUMMY_OPTIONS_INIT;
	struct uhmm_migrate_result mres = { 0, 0 };
	struct uhmm_stats s0 = UHMM_STATS_INIT, s1 = UHMM_STATS_INIT, tot = UHMM_STATS_INIT;
	struct uhmm_dummy_counters dc = { 0, 0 };
	uint64_t *buf = NULL;
	char b1[32];
	int rc, ret = CLI_EXIT_FAIL, ok = 1;

	/* Only whole, aligned granules become coherent. */
	d->size = (d->size + UHMM_COHERENT_GRANULE - 1) / UHMM_COHERENT_GRANULE *
	          UHMM_COHERENT_GRANULE;
	d->npages = d->size / d->pagesz;
	if (open_ctx(mode, &d->h) < 0)
		return CLI_EXIT_FAIL;
	memset(&dopts, 0, sizeof(dopts));
	dopts.sz = sizeof(dopts);
	dopts.capacity = d->size;
	dopts.devmem_flags = UHMM_DEVMEM_DEVICE | UHMM_DEVMEM_ALLOW_MIGRATION;
	rc = uhmm_dummy_create(d->h, &dopts, &d->dev);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_dummy_create (coherent): %s\n", strerror(-rc));
		if (rc == -EOPNOTSUPP)
			fprintf(stderr, "uhmm demo: coherent memory needs userfaultfd write-protect "
			        "on shmem (see 'uhmm info')\n");
		goto out_close;
	}
	rc = uhmm_alloc(d->h, d->size, (void **)&d->mem);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_alloc(%zu): %s\n", d->size, strerror(-rc));
		goto out_close;
	}
	buf = malloc(BATCH_PAGES * d->pagesz);
	if (!buf) {
		fprintf(stderr, "uhmm demo: out of memory\n");
		goto out_free;
	}

	printf("uhmm demo --type coherent: %s of managed memory (%zu pages, %zu granules of "
	       "%u KiB) at %p\n", cli_fmt_bytes(b1, sizeof(b1), d->size), d->npages,
	       d->size / UHMM_COHERENT_GRANULE, UHMM_COHERENT_GRANULE >> 10, (void *)d->mem);
	print_mode(d, mode);
	printf(", device \"%s\" (dummy, coherent memory: a memory file the CPU maps)\n",
	       uhmm_device_name(d->dev));
	uhmm_stats_get(d->h, &s0);

	printf("\n[1/6] CPU fills every page with a per-page pattern\n");
	phase_begin(d);
	step_fill(d);
	phase_end(d, "1 fill (CPU first touch)");

	printf("[2/6] migrate to coherent device memory (uhmm_migrate)\n");
	phase_begin(d);
	rc = uhmm_migrate(d->h, d->mem, d->size, d->dev, &mres);
	phase_end(d, "2 migrate to device");
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_migrate: %s\n", strerror(-rc));
		goto out_free;
	}
	printf("      %zu pages migrated, %zu skipped\n", mres.migrated, mres.skipped);
	if (mres.migrated != d->npages || expect_states(d, "after migrate",
	                                                UHMM_STATE_DEVICE_COHERENT) < 0)
		ok = 0;

	printf("[3/6] CPU reads, checks, transforms (xor 0xa5) and writes every page in place\n");
	phase_begin(d);
	cpu_pass(d, "CPU in-place read", 0, DEVICE_XOR);
	phase_end(d, "3 CPU in place (read+xor+wr)");
	printf("      %" PRIu64 " CPU faults (in place: none expected)\n",
	       d->phases[2].d.cpu_faults);
	if (d->phases[2].d.cpu_faults != 0 || d->phases[2].d.pages_to_system != 0 ||
	    expect_states(d, "after CPU in place", UHMM_STATE_DEVICE_COHERENT) < 0)
		ok = 0;

	printf("[4/6] device reads every page in its own memory and checks the CPU's writes\n");
	phase_begin(d);
	rc = device_pass(d, buf, DEVICE_XOR);
	phase_end(d, "4 device read + check");
	if (rc < 0)
		goto out_free;

	printf("[5/6] explicit migration back to system memory (uhmm_migrate to NULL)\n");
	phase_begin(d);
	rc = uhmm_migrate(d->h, d->mem, d->size, NULL, &mres);
	phase_end(d, "5 migrate back");
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_migrate back: %s\n", strerror(-rc));
		goto out_free;
	}
	printf("      %zu pages migrated, %zu skipped\n", mres.migrated, mres.skipped);
	if (mres.migrated != d->npages ||
	    expect_states(d, "after migrate back", UHMM_STATE_SYSTEM) < 0)
		ok = 0;

	printf("[6/6] CPU reads every byte and verifies\n");
	phase_begin(d);
	cpu_pass(d, "CPU read-back", DEVICE_XOR, 0);
	phase_end(d, "6 CPU read-back + verify");

	uhmm_stats_get(d->h, &s1);
	stats_delta(&tot, &s0, &s1);
	uhmm_dummy_counters_get(d->dev, &dc);
	print_report(d, &tot, &dc);

	printf("\nresult\n");
	if (d->device_bad_pages)
		printf("  device saw %" PRIu64 " bad bytes in %" PRIu64 " pages\n",
		       d->device_bad_bytes, d->device_bad_pages);
	if (d->cpu_bad_pages)
		printf("  CPU saw %" PRIu64 " bad bytes in %" PRIu64 " pages\n", d->cpu_bad_bytes,
		       d->cpu_bad_pages);
	if (d->device_bad_pages || d->cpu_bad_pages || !ok) {
		printf("  FAILED: %s\n", ok ? "data mismatch" : "pages not where expected");
		goto out_free;
	}
	printf("  OK: all %zu bytes changed in place by the CPU with 0 CPU faults, seen by the "
	       "device, verified after migration back\n", d->size);
	ret = CLI_EXIT_OK;

out_free:
	free(buf);
	rc = uhmm_free(d->h, d->mem, d->size);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_free: %s\n", strerror(-rc));
		ret = CLI_EXIT_FAIL;
	}
out_close:
	rc = uhmm_close(d->h);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_close: %s\n", strerror(-rc));
		ret = CLI_EXIT_FAIL;
	}
	return ret;
}

/* A context and a persistent dummy device over path, its memory mapped. */
static int persistent_open(struct demo *d, enum uhmm_fault_mode mode, const char *path,
                           int prot, struct uhmm_devmem **m)
{
	struct uhmm_dummy_options dopts = UHMM_DUMMY_OPTIONS_INIT;
	int rc;

	if (open_ctx(mode, &d->h) < 0)
		return -1;
	memset(&dopts, 0, sizeof(dopts));
	dopts.sz = sizeof(dopts);
	dopts.capacity = d->size;
	dopts.devmem_flags = UHMM_DEVMEM_DEVICE;
	dopts.path = path;
	rc = uhmm_dummy_create(d->h, &dopts, &d->dev);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_dummy_create (persistent, %s): %s\n", path,
		        strerror(-rc));
		uhmm_close(d->h);
		return -1;
	}
	*m = uhmm_dummy_devmem(d->dev);
	rc = uhmm_devmem_map(*m, 0, d->size, prot, (void **)&d->mem);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_devmem_map: %s\n", strerror(-rc));
		uhmm_close(d->h);
		return -1;
	}
	return 0;
}

static int persistent_close(struct demo *d, struct uhmm_devmem *m)
{
	int rc = uhmm_devmem_unmap(m, d->mem, d->size), rc2;

	if (rc < 0)
		fprintf(stderr, "uhmm demo: uhmm_devmem_unmap: %s\n", strerror(-rc));
	rc2 = uhmm_close(d->h);
	if (rc2 < 0)
		fprintf(stderr, "uhmm demo: uhmm_close: %s\n", strerror(-rc2));
	d->h = NULL;
	return rc < 0 ? rc : rc2;
}

static int demo_persistent(struct demo *d, enum uhmm_fault_mode mode)
{
	struct uhmm_devmem *m;
	struct uhmm_migrate_result to_dev = { 0, 0 }, to_sys = { 0, 0 };
	char path[64], b1[32];
	int rc, ret = CLI_EXIT_FAIL, ok = 1;
	double t;

	snprintf(path, sizeof(path), "/dev/shm/uhmm-demo-%d", (int)getpid());
	unlink(path);
	if (persistent_open(d, mode, path, PROT_READ | PROT_WRITE, &m) < 0)
		goto out_unlink;

	printf("uhmm demo --type persistent: %s of persistent device memory (%zu pages) in %s\n",
	       cli_fmt_bytes(b1, sizeof(b1), d->size), d->npages, path);
	print_mode(d, mode);
	printf(", device \"%s\" (dummy, persistent memory: never migrated)\n",
	       uhmm_device_name(d->dev));

	printf("\n[1/5] the CPU maps the device memory (uhmm_devmem_map at %p) and writes a\n"
	       "      per-page pattern in place\n", (void *)d->mem);
	phase_begin(d);
	step_fill(d);
	phase_end(d, "1 CPU writes in place");
	if (expect_states(d, "after fill", UHMM_STATE_DEVICE_COHERENT) < 0)
		ok = 0;
	if (d->phases[0].d.cpu_faults)
		ok = 0;

	printf("[2/5] migration attempts (uhmm_migrate to the device, then to system memory)\n");
	t = now_s();
	rc = uhmm_migrate(d->h, d->mem, d->size, d->dev, &to_dev);
	if (rc == 0)
		rc = uhmm_migrate(d->h, d->mem, d->size, NULL, &to_sys);
	t = now_s() - t;
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_migrate: %s\n", strerror(-rc));
		persistent_close(d, m);
		goto out_unlink;
	}
	printf("      to the device: %zu migrated, %zu skipped; to system memory: %zu migrated, "
	       "%zu skipped (%.1f ms)\n", to_dev.migrated, to_dev.skipped, to_sys.migrated,
	       to_sys.skipped, t * 1e3);
	if (to_dev.migrated || to_sys.migrated || to_dev.skipped != d->npages ||
	    to_sys.skipped != d->npages) {
		fprintf(stderr, "uhmm demo: expected every page skipped\n");
		ok = 0;
	}
	if (expect_states(d, "after migration tries", UHMM_STATE_DEVICE_COHERENT) < 0)
		ok = 0;

	printf("[3/5] unmap (uhmm_devmem_unmap) and close the context (uhmm_close)\n");
	t = now_s();
	if (persistent_close(d, m) < 0)
		goto out_unlink;
	printf("      closed in %.1f ms; %s stays\n", (now_s() - t) * 1e3, path);

	printf("[4/5] a new context and device over the same file; the CPU maps it and verifies\n");
	if (persistent_open(d, mode, path, PROT_READ, &m) < 0)
		goto out_unlink;
	phase_begin(d);
	cpu_pass(d, "CPU read after reopen", 0, 0);
	phase_end(d, "2 reopened: CPU verify");

	printf("[5/5] unmap, close, remove %s\n", path);
	if (persistent_close(d, m) < 0)
		ok = 0;

	print_phases(d);
	printf("\nresult\n");
	if (d->cpu_bad_pages)
		printf("  CPU saw %" PRIu64 " bad bytes in %" PRIu64 " pages after reopening\n",
		       d->cpu_bad_bytes, d->cpu_bad_pages);
	if (d->cpu_bad_pages || !ok) {
		printf("  FAILED: %s\n", d->cpu_bad_pages ? "data mismatch" : "unexpected behaviour");
		goto out_unlink;
	}
	printf("  OK: all %zu bytes written in place, never migrated, verified after close and "
	       "reopen\n", d->size);
	ret = CLI_EXIT_OK;
out_unlink:
	unlink(path);
	return ret;
}

int cmd_demo(int argc, char **argv)
{
	struct uhmm_options opts = UHMM_OPTIONS_INIT;
	struct uhmm_dummy_options dopts = UHMM_DUMMY_OPTIONS_INIT;
	struct uhmm_migrate_result mres = { 0, 0 };
	struct uhmm_stats s0 = UHMM_STATS_INIT, s1 = UHMM_STATS_INIT, tot = UHMM_STATS_INIT;
	struct uhmm_dummy_counters dc = { 0, 0 }, bc = { 0, 0 };
	struct uhmm_device *devb = NULL;
	struct demo d;
	size_t counts[5][NSTATES], sample_counts[NSTATES], sample;
	int moved_ok = 1;
	enum uhmm_fault_mode mode = UHMM_FAULT_AUTO;
	enum demo_type type = TYPE_PRIVATE;
	size_t size = DEFAULT_SIZE;
	uint64_t *buf = NULL;
	char b1[32], b2[32];
	int rc, ret = CLI_EXIT_FAIL;
	double t;

	rc = parse_args(argc, argv, &size, &mode, &type);
	if (rc)
		return rc < 0 ? CLI_EXIT_OK : rc;

	memset(&d, 0, sizeof(d));
	d.pagesz = (size_t)sysconf(_SC_PAGESIZE);
	if (size > SIZE_MAX - d.pagesz)
		return cli_usage_error("demo", "size too large");
	d.size = (size + d.pagesz - 1) / d.pagesz * d.pagesz;
	d.npages = d.size / d.pagesz;
	d.words = d.pagesz / sizeof(uint64_t);
	if (type == TYPE_COHERENT)
		return demo_coherent(&d, mode);
	if (type == TYPE_PERSISTENT)
		return demo_persistent(&d, mode);

	memset(&opts, 0, sizeof(opts));
	opts.sz = sizeof(opts);
	opts.fault_mode = mode;
	rc = uhmm_open(&opts, &d.h);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_open: %s\n", strerror(-rc));
		fprintf(stderr, "uhmm demo: run 'uhmm info' to see whether userfaultfd works here\n");
		return CLI_EXIT_FAIL;
	}
	memset(&dopts, 0, sizeof(dopts));
	dopts.sz = sizeof(dopts);
	dopts.capacity = d.size; /* rounded up to UHMM_DUMMY_CHUNK, added on demand */
	rc = uhmm_dummy_create(d.h, &dopts, &d.dev);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_dummy_create: %s\n", strerror(-rc));
		goto out_close;
	}
	rc = uhmm_alloc(d.h, d.size, (void **)&d.mem);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_alloc(%zu): %s\n", d.size, strerror(-rc));
		goto out_close;
	}
	buf = malloc(BATCH_PAGES * d.pagesz);
	if (!buf) {
		fprintf(stderr, "uhmm demo: out of memory\n");
		goto out_free;
	}

	printf("uhmm demo: %s of managed memory (%zu pages of %zu bytes) at %p\n",
	       cli_fmt_bytes(b1, sizeof(b1), d.size), d.npages, d.pagesz, (void *)d.mem);
	printf("  fault mode %s%s, device \"%s\" (dummy, %s unaddressable memory)\n",
	       mode_name(uhmm_fault_mode(d.h)),
	       mode != UHMM_FAULT_AUTO ? "" :
	       env_mode() ? " (from UHMM_FAULT_MODE)" : " (chosen by AUTO)",
	       uhmm_device_name(d.dev),
	       cli_fmt_bytes(b2, sizeof(b2),
	                     (d.size + UHMM_DUMMY_CHUNK - 1) / UHMM_DUMMY_CHUNK * UHMM_DUMMY_CHUNK));
	uhmm_stats_get(d.h, &s0);

	printf("\n[1/5] CPU fills every page with a per-page pattern\n");
	phase_begin(&d);
	step_fill(&d);
	phase_end(&d, "1 fill (CPU first touch)");
	if (count_states(d.h, d.mem, d.npages, d.pagesz, counts[0]) < 0)
		goto out_free;

	printf("[2/5] migrate to the device (uhmm_migrate)\n");
	phase_begin(&d);
	rc = uhmm_migrate(d.h, d.mem, d.size, d.dev, &mres);
	phase_end(&d, "2 migrate to device");
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_migrate: %s\n", strerror(-rc));
		goto out_free;
	}
	printf("      %zu pages migrated, %zu skipped\n", mres.migrated, mres.skipped);
	if (count_states(d.h, d.mem, d.npages, d.pagesz, counts[1]) < 0)
		goto out_free;

	printf("[3/5] device A reads, checks, transforms (xor 0xa5) and writes back, %d pages at a time\n",
	       BATCH_PAGES);
	phase_begin(&d);
	rc = step_device(&d, buf);
	phase_end(&d, "3 device op (read+xor+write)");
	if (rc < 0)
		goto out_free;
	if (count_states(d.h, d.mem, d.npages, d.pagesz, counts[2]) < 0)
		goto out_free;

	/* Step 4: a second device reads 10% of the pages (at least one) from device A. */
	sample = d.npages / 10 ? d.npages / 10 : 1;
	memset(&dopts, 0, sizeof(dopts));
	dopts.sz = sizeof(dopts);
	dopts.capacity = sample * d.pagesz;
	rc = uhmm_dummy_create(d.h, &dopts, &devb);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_dummy_create (device B): %s\n", strerror(-rc));
		goto out_free;
	}
	if (count_states(d.h, d.mem, sample, d.pagesz, sample_counts) < 0)
		goto out_free;
	printf("[4/5] a second dummy device B reads the first %zu pages (%zu of them on "
	       "device A)\n", sample, sample_counts[UHMM_STATE_DEVICE]);
	phase_begin(&d);
	rc = step_second_device(&d, devb, buf, sample, &bc);
	phase_end(&d, "4 device B reads A's pages");
	if (rc < 0)
		goto out_free;
	{
		const struct phase *ph = &d.phases[d.nphases - 1];

		printf("      %" PRIu64 " pages moved device A -> system memory, %" PRIu64
		       " mirror invalidations (A's),\n      %" PRIu64
		       " device fault rounds on B; %s\n",
		       ph->d.pages_to_system, ph->d.invalidations, bc.faults,
		       d.b_bad_pages ? "data MISMATCH" : "every byte as device A wrote it");
		if (ph->d.pages_to_system != sample_counts[UHMM_STATE_DEVICE]) {
			fprintf(stderr, "uhmm demo: device B: expected %zu pages moved home, %" PRIu64
			        "\n", sample_counts[UHMM_STATE_DEVICE], ph->d.pages_to_system);
			moved_ok = 0;
		}
	}
	if (count_states(d.h, d.mem, d.npages, d.pagesz, counts[3]) < 0)
		goto out_free;

	printf("[5/5] CPU reads every byte back (faulting pages home) and verifies\n");
	phase_begin(&d);
	step_verify(&d);
	phase_end(&d, "5 CPU read-back + verify");
	d.readback_phase = d.nphases;
	if (count_states(d.h, d.mem, d.npages, d.pagesz, counts[4]) < 0)
		goto out_free;

	uhmm_stats_get(d.h, &s1);
	stats_delta(&tot, &s0, &s1);
	uhmm_dummy_counters_get(d.dev, &dc);

	printf("\npage states (uhmm_query)\n");
	print_states("after fill", counts[0]);
	print_states("after migrate", counts[1]);
	print_states("after device op", counts[2]);
	print_states("after device B read", counts[3]);
	print_states("after CPU read-back", counts[4]);
	print_report(&d, &tot, &dc);

	printf("\nresult\n");
	if (d.device_bad_pages)
		printf("  device saw %" PRIu64 " bad bytes in %" PRIu64 " pages after migration\n",
		       d.device_bad_bytes, d.device_bad_pages);
	if (d.cpu_bad_pages)
		printf("  CPU saw %" PRIu64 " bad bytes in %" PRIu64 " pages after read-back\n",
		       d.cpu_bad_bytes, d.cpu_bad_pages);
	if (d.b_bad_pages)
		printf("  device B saw %" PRIu64 " bad bytes in %" PRIu64 " pages\n", d.b_bad_bytes,
		       d.b_bad_pages);
	if (d.device_bad_pages || d.cpu_bad_pages || d.b_bad_pages || !moved_ok) {
		printf("  FAILED: %s\n", moved_ok ? "data mismatch" : "pages not where expected");
		goto out_free;
	}
	printf("  OK: all %zu bytes verified on the device and again on the CPU; %zu pages "
	       "read by device B from device A verified\n", d.size, sample);
	ret = CLI_EXIT_OK;

out_free:
	free(buf);
	rc = uhmm_free(d.h, d.mem, d.size);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_free: %s\n", strerror(-rc));
		ret = CLI_EXIT_FAIL;
	}
out_close:
	t = now_s();
	rc = uhmm_close(d.h);
	if (rc < 0) {
		fprintf(stderr, "uhmm demo: uhmm_close: %s\n", strerror(-rc));
		ret = CLI_EXIT_FAIL;
	} else if (ret == CLI_EXIT_OK) {
		printf("  context closed in %.1f ms\n", (now_s() - t) * 1e3);
	}
	return ret;
}
