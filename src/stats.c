/* SPDX-License-Identifier: MIT */
/* Counters: relaxed atomics on the hot paths, copied out on demand. */
#include "internal.h"

#include <string.h>

UHMM_API int uhmm_stats_get(struct uhmm *h, struct uhmm_stats *out)
{
	if (!h || !out)
		return -EINVAL;
	long n = sized_check(out, UHMM_STATS_V1, UHMM_STATS_KNOWN);
	if (n < 0)
		return (int)n;
	/* Filled here and copied out: a caller built against an older header
	 * has no room for the fields it does not know. */
	struct uhmm_stats s = { .sz = out->sz };
#define LOAD(i) atomic_load_explicit(&h->stats[i], memory_order_relaxed)
	s.cpu_faults = LOAD(ST_CPU_FAULTS);
	s.pages_to_device = LOAD(ST_TO_DEVICE);
	s.pages_to_system = LOAD(ST_TO_SYSTEM);
	s.device_faults = LOAD(ST_DEVICE_FAULTS);
	s.invalidations = LOAD(ST_INVALIDATIONS);
	s.pages_skipped = LOAD(ST_SKIPPED);
	s.pages_zero_filled = LOAD(ST_ZERO_FILLED);
	s.move_calls = LOAD(ST_MOVE_CALLS);
	s.copy_calls = LOAD(ST_COPY_CALLS);
	s.fallback_pages = LOAD(ST_FALLBACK);
	s.pages_ahead = LOAD(ST_AHEAD);
	s.pages_staged = LOAD(ST_STAGED);
	s.pages_unshared = LOAD(ST_UNSHARED);
	s.deferred_faults = LOAD(ST_DEFERRED);
	s.events = LOAD(ST_EVENTS);
	s.pages_poisoned = LOAD(ST_POISONED);
#undef LOAD
	memcpy(out, &s, (size_t)n);
	return 0;
}
