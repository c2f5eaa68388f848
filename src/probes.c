/* SPDX-License-Identifier: MIT */
/*
 * The USDT probes' semaphores (probes.h).  In section .probes, as
 * sys/sdt.h's own dtrace -h headers put them: a file-backed data section,
 * so the kernel (uprobe reference counters) can raise a semaphore in every
 * process that maps this object, including ones started after the tracer.
 */
#include "probes.h"

#ifdef UHMM_HAVE_SDT
#define UHMM_PROBE_DEFINE(name) \
	volatile unsigned short UHMM_SEMAPHORE(name) __attribute__((section(".probes"))) = 0
UHMM_PROBE_DEFINE(migrate_start);
UHMM_PROBE_DEFINE(migrate_end);
UHMM_PROBE_DEFINE(cpu_fault);
UHMM_PROBE_DEFINE(device_fault);
UHMM_PROBE_DEFINE(invalidation);
UHMM_PROBE_DEFINE(devmem_add);
UHMM_PROBE_DEFINE(devmem_remove);
#else
/* ISO C wants a translation unit to declare something. */
typedef int uhmm_probes_none;
#endif
