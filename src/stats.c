/* SPDX-License-Identifier: MIT */
/* Counters: relaxed atomics on the hot paths, copied out on demand. */
#include "internal.h"

UHMM_API int uhmm_stats_get(struct uhmm *h, struct uhmm_stats *out)
{
	if (!h || !out)
		return -EINVAL;
#define LOAD(i) atomic_load_explicit(&h->stats[i], memory_order_relaxed)
	out->cpu_faults = LOAD(ST_CPU_FAULTS);
	out->pages_to_device = LOAD(ST_TO_DEVICE);
	out->pages_to_system = LOAD(ST_TO_SYSTEM);
	out->device_faults = LOAD(ST_DEVICE_FAULTS);
	out->invalidations = LOAD(ST_INVALIDATIONS);
	out->pages_skipped = LOAD(ST_SKIPPED);
	out->pages_zero_filled = LOAD(ST_ZERO_FILLED);
	out->move_calls = LOAD(ST_MOVE_CALLS);
	out->copy_calls = LOAD(ST_COPY_CALLS);
	out->fallback_pages = LOAD(ST_FALLBACK);
	out->pages_ahead = LOAD(ST_AHEAD);
	out->deferred_faults = LOAD(ST_DEFERRED);
	out->events = LOAD(ST_EVENTS);
	out->pages_poisoned = LOAD(ST_POISONED);
#undef LOAD
	return 0;
}
