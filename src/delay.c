/* SPDX-License-Identifier: MIT */
/*
 * Interleaving points: debugging and test aids that hold a thread at a
 * named point, so that a race between two paths can be made to happen
 * every time instead of by luck.  Two kinds, one rule (off, a point costs
 * one relaxed load):
 *
 *  - DELAY(point): UHMM_DEBUG_DELAY, read at uhmm_open, sleeps there; works
 *    in any build, from the environment.
 *  - DEBUG_HOOK(point, addr, len): a callback that a test linked with the
 *    library's objects installs in debug_hook (internal.h lists the
 *    points), to make another thread act exactly there.
 *
 *   UHMM_DEBUG_DELAY=release:200000,alloc:50000   (microseconds)
 *
 * The names are those of delay_names[] below; each point says, next to its
 * DELAY() in the code, which interleaving it opens.  Off (the variable
 * unset), a point costs one relaxed load.  Async-signal-safe: the sleep is
 * nanosleep(2), and a point may sit on the SIGBUS path.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

_Atomic unsigned g_delay_on;
static _Atomic unsigned g_delay_us[DELAY__COUNT];

static const char *const delay_names[DELAY__COUNT] = {
	[DELAY_RELEASE] = "release",
	[DELAY_ALLOC] = "alloc",
	[DELAY_SERVICE] = "service",
};

void delay_init(void)
{
	const char *s = getenv("UHMM_DEBUG_DELAY");
	unsigned on = 0;
	for (int i = 0; i < DELAY__COUNT; i++)
		atomic_store(&g_delay_us[i], 0);
	while (s && *s) {
		size_t n = strcspn(s, ":,");
		for (int i = 0; i < DELAY__COUNT; i++) {
			if (strlen(delay_names[i]) == n && !strncmp(s, delay_names[i], n) && s[n] == ':') {
				unsigned long us = strtoul(s + n + 1, NULL, 10);
				atomic_store(&g_delay_us[i], (unsigned)MIN(us, 10000000UL));
				if (us)
					on |= 1u << i;
			}
		}
		s += strcspn(s, ",");
		if (*s == ',')
			s++;
	}
	atomic_store(&g_delay_on, on);
}

void delay_at_(unsigned point)
{
	unsigned us = atomic_load_explicit(&g_delay_us[point], memory_order_relaxed);
	struct timespec ts = { us / 1000000, (long)(us % 1000000) * 1000 };
	while (nanosleep(&ts, &ts))
		;
}

void (*_Atomic debug_hook)(int point, uintptr_t addr, size_t len);
