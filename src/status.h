/* SPDX-License-Identifier: MIT */
/*
 * The live-status segment (status.c): what `uhmm stat` and `uhmm top` read
 * of a running process.  One POSIX shared-memory object per context,
 * /dev/shm/uhmm.<pid>.<serial>, mode 0600 (its owner only), unlinked at
 * uhmm_close.  UHMM_NO_STATUS=1 or UHMM_OPT_NO_STATUS: none.
 *
 * The layout is the contract between the library and the tool (both built
 * from this header): a reader checks magic and version, and reads no more
 * than `size`.  Version 1:
 *
 *  - The header (pid, serial, fault mode) is written once, at uhmm_open.
 *  - stats[] IS the context's counter array: the library's fault and
 *    migration paths add to it in place (relaxed atomics), exactly as they
 *    did to a private array, so a reader sees live counters at no cost.
 *  - Devices and ranges are a snapshot taken on request by the context's
 *    status thread: a reader increments `req` and futex-wakes it (a shared
 *    futex); the thread walks the devices and the page table, writes the
 *    snapshot under the `seq` seqlock (odd while writing) and sets `done`
 *    to the request it answered.  Nothing is computed when nobody asks.
 */
#ifndef UHMM_STATUS_H
#define UHMM_STATUS_H

#include <stdatomic.h>
#include <stdint.h>

#define UHMM_STATUS_MAGIC   "UHMMSTA1"
#define UHMM_STATUS_VERSION 1
#define UHMM_STATUS_PREFIX  "uhmm." /* /dev/shm/uhmm.<pid>.<serial> */
#define UHMM_STATUS_NSTATS  32
#define UHMM_STATUS_NDEV    32
#define UHMM_STATUS_NRANGES 256

/* Indices of stats[] (the library's ST_* order, internal.h). */
enum {
	UHMM_STATUS_CPU_FAULTS, UHMM_STATUS_TO_DEVICE, UHMM_STATUS_TO_SYSTEM,
	UHMM_STATUS_DEVICE_FAULTS, UHMM_STATUS_INVALIDATIONS, UHMM_STATUS_SKIPPED,
	UHMM_STATUS_ZERO_FILLED, UHMM_STATUS_MOVE_CALLS, UHMM_STATUS_COPY_CALLS,
	UHMM_STATUS_FALLBACK, UHMM_STATUS_DEFERRED, UHMM_STATUS_EVENTS, UHMM_STATUS_POISONED,
	UHMM_STATUS_AHEAD, UHMM_STATUS_STAGED, UHMM_STATUS_UNSHARED, UHMM_STATUS__COUNT
};

/* Page states, as enum uhmm_state: none, system, device, coherent, poisoned. */
#define UHMM_STATUS_NSTATES 5

struct uhmm_status_dev {
	char name[32];
	uint32_t slot;
	uint32_t nblocks;
	uint64_t used_pages;      /* device pages holding data (all blocks) */
	uint64_t coherent_pages;  /* of which in blocks the CPU addresses in place
	                             (coherent or persistent) */
	uint64_t capacity_pages;  /* pages of the blocks it has now */
	uint64_t max_pages;       /* growth limit (0: no growth) */
};

struct uhmm_status_range {
	uint64_t start, end;
	uint64_t pages[UHMM_STATUS_NSTATES]; /* by enum uhmm_state */
};

struct uhmm_status {
	char magic[8];
	uint32_t version;
	uint32_t size;          /* bytes of this structure */
	int32_t pid;
	uint32_t serial;        /* n-th context opened by the process */
	uint32_t fault_mode;    /* enum uhmm_fault_mode */
	uint32_t nstats;        /* counters in use in stats[] */
	_Atomic uint64_t stats[UHMM_STATUS_NSTATS];
	/* Snapshot requests (see above). */
	_Atomic uint32_t req;
	_Atomic uint32_t done;
	_Atomic uint32_t seq;
	uint32_t ndevices;
	uint32_t nranges;       /* entries filled in range[] */
	uint32_t nranges_total; /* ranges of the context (more than nranges: cut) */
	uint64_t snapshot_ns;   /* CLOCK_MONOTONIC time of the snapshot */
	struct uhmm_status_dev dev[UHMM_STATUS_NDEV];
	struct uhmm_status_range range[UHMM_STATUS_NRANGES];
};

#endif
