/* SPDX-License-Identifier: MIT */
/*
 * `uhmm bench`: shared declarations of the framework (bench.c) and the
 * cases (bench_cases.c, bench_copy.c, bench_cuda.c).
 */
#ifndef UHMM_BENCH_H
#define UHMM_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uhmm.h"

#define BENCH_PAGE     4096ul
#define BENCH_MAX_REPS 100

struct bench_opts {
	size_t size;      /* bytes per case (default 1 GiB) */
	unsigned threads; /* the threads case (default 2) */
	int reps;         /* repetitions per figure (default 5) */
	bool quick;       /* smoke run: tiny sizes */
	bool size_set;    /* --size given (a case may have its own default) */
	bool threads_set; /* --threads given (migrate-copy: else 1 and 2) */
};

extern struct bench_opts bopt;

enum bench_unit { U_GBPS, U_US, U_MS, U_BPP, U_MIB, U_PCT };
enum bench_cmp { CMP_NONE, CMP_GE, CMP_LE };

/* A series of per-repetition samples. */
struct series {
	double v[BENCH_MAX_REPS];
	int n;
};

struct stat3 {
	double med, min, max;
};

/*
 * One row of the table: a figure measured with uhmm (val), the baseline
 * taken in the same repetitions (base), and their per-repetition ratio
 * val/base (for throughput, higher is better; for times, lower is better).
 */
struct row {
	char cname[24];     /* case */
	char variant[32];   /* mode, granule, direction, ... */
	enum bench_unit unit;
	char base_name[40]; /* "" = no baseline */
	struct series val, base;
	enum bench_cmp cmp;
	double target;      /* on the median ratio (or on the value when no baseline) */
	bool info;          /* target shown for reference, not judged */
	size_t granule;     /* sweep rows: granule / migration size in bytes (0: not a sweep row) */
	char sweep[24];     /* sweep series name */
	char note[200];
	/* filled by row_finish */
	struct stat3 sv, sb, sr;
	const char *status;
};

/* The framework. */
struct row *row_new(const char *cname, const char *variant, enum bench_unit u,
                    const char *base_name);
void row_finish(struct row *r, enum bench_cmp cmp, double target, bool info);
void series_add(struct series *s, double v);
void progress(const char *cname, const char *variant, int rep, int reps);
void bench_error(const char *cname, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
double now_s(void);

/* Shared by the cases (bench_cases.c): this process's RSS in bytes, -1 unknown. */
long statm_rss(void);

/* The cases: 0 ok, -1 failed (error printed). */
int case_migrate_to_device(void);
int case_migrate_to_system(void);
int case_fault_latency(void);
int case_fault_stream(void);
int case_fault_random(void);
int case_device_fault(void);
int case_threads(void);
int case_huge(void);
int case_metadata(void);
int case_granule(void);

/* The copy path (bench_copy.c). */
int case_migrate_copy(void);

/* The CUDA cases (bench_cuda.c): run with --cuda or by name. */
int case_cuda_migrate(void);
int case_cuda_fault_back(void);
int case_cuda_saxpy(void);

#endif /* UHMM_BENCH_H */
