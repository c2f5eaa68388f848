/* SPDX-License-Identifier: MIT */
/*
 * USDT probes (provider "uhmm"), listed with their arguments in
 * docs/USAGE.md "Tracing".  Built when meson finds <sys/sdt.h> (Debian's
 * systemtap-sdt-dev; option -Dusdt); otherwise every macro here is empty.
 *
 * Every probe has an SDT semaphore (uhmm_NAME_semaphore, defined in
 * probes.c), which a tracer raises while it is attached: a probe's
 * arguments are computed, and the CPU fault's clock read, only then.  With
 * no tracer a probe costs one load and a not-taken branch.  The probe site
 * itself is a nop and the semaphore a plain load: both async-signal-safe,
 * so probes may fire in the SIGBUS handler.
 */
#ifndef UHMM_PROBES_H
#define UHMM_PROBES_H

#include <stdint.h>
#include <time.h>

#ifdef UHMM_HAVE_SDT
#define _SDT_HAS_SEMAPHORES 1
#define SDT_USE_VARIADIC 1
#include <sys/sdt.h>

#define UHMM_SEMAPHORE(name) uhmm_##name##_semaphore
#define UHMM_PROBE_DECLARE(name) extern volatile unsigned short UHMM_SEMAPHORE(name)
UHMM_PROBE_DECLARE(migrate_start);
UHMM_PROBE_DECLARE(migrate_end);
UHMM_PROBE_DECLARE(cpu_fault);
UHMM_PROBE_DECLARE(device_fault);
UHMM_PROBE_DECLARE(invalidation);
UHMM_PROBE_DECLARE(devmem_add);
UHMM_PROBE_DECLARE(devmem_remove);

#define UHMM_PROBE_ENABLED(name) __builtin_expect(UHMM_SEMAPHORE(name) != 0, 0)
#define UHMM_PROBE(name, ...)                                  \
	do {                                                   \
		if (UHMM_PROBE_ENABLED(name))                  \
			STAP_PROBEV(uhmm, name, __VA_ARGS__);  \
	} while (0)
#else
/* Never called: keeps the arguments "used" (and compiled) without sdt.h. */
static inline void uhmm_probe_unused(int x, ...) { (void)x; }
#define UHMM_PROBE_ENABLED(name) 0
#define UHMM_PROBE(name, ...)                                  \
	do {                                                   \
		if (0)                                         \
			uhmm_probe_unused(0, __VA_ARGS__);     \
	} while (0)
#endif

/* Nanoseconds for the cpu_fault probe (vDSO clock: async-signal-safe). */
static inline uint64_t uhmm_probe_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
