/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: input bytes become a sequence of uhmm API calls, many
 * with invalid arguments (NULL, unaligned, zero, wrapping and huge lengths,
 * unmanaged and unmapped addresses, memory and devices of another context,
 * unknown flags, double free / remove).  Every call must return 0 or a
 * negative errno; a crash, a sanitizer report or a data mismatch on the
 * pages the target owns is a library bug.
 *
 * Build and run: `make fuzz` (clang -fsanitize=fuzzer,address,undefined,
 * linking the library sources directly).  Seed corpus: tests/fuzz/corpus/.
 *
 * What the target never does, because it is the caller's undefined
 * behaviour rather than a bad argument: use a handle after destroying it
 * (device, devmem, mirror, context), or touch memory with the CPU where it
 * must fault (PROT_NONE after uhmm_mprotect, a lost device's pages).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uhmm.h"

#define PSZ     4096UL
#define SLOTS   4
#define SLOTPG  16
#define MAXMEM  4

static struct uhmm *H, *H2;
static struct uhmm_device *dA, *dB, *dForeign;
static void *foreign_mem; /* managed by H2 */
static void *plain;       /* ordinary memory, never managed */
static char *buf;

struct slot {
	char *p;        /* NULL: empty */
	size_t npages;
	bool managed;   /* entirely managed (alloc'd or adopted) */
	bool rw;        /* CPU may touch it */
	uint8_t fill;   /* every byte of every page, when `known` */
	bool known;
};

static void die(const char *what, long v)
{
	fprintf(stderr, "fuzz_api: %s (%ld)\n", what, v);
	abort();
}

static void setup(void)
{
	struct uhmm_options o = UHMM_OPTIONS_INIT;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.fault_mode = UHMM_FAULT_THREAD;
	if (uhmm_open(&o, &H) || uhmm_open(&o, &H2))
		die("uhmm_open", 0);
	if (uhmm_dummy_create(H, NULL, &dA) || uhmm_dummy_create(H, NULL, &dB) ||
	    uhmm_dummy_create(H2, NULL, &dForeign))
		die("uhmm_dummy_create", 0);
	if (uhmm_alloc(H2, 4 * PSZ, &foreign_mem))
		die("uhmm_alloc", 0);
	plain = mmap(NULL, 8 * PSZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	buf = malloc(64 * PSZ);
	if (plain == MAP_FAILED || !buf)
		die("mmap", 0);
}

struct in {
	const uint8_t *d;
	size_t n, i;
};

static uint8_t u8(struct in *in)
{
	return in->i < in->n ? in->d[in->i++] : 0;
}

static uint32_t u32(struct in *in)
{
	uint32_t v = 0;
	for (int k = 0; k < 4; k++)
		v = v << 8 | u8(in);
	return v;
}

static struct slot slots[SLOTS];

/* An address, good or bad. */
static void *addr_of(struct in *in, struct slot **sp)
{
	uint8_t c = u8(in);
	struct slot *s = &slots[c % SLOTS];
	*sp = NULL;
	switch ((c >> 2) % 10) {
	case 0: return NULL;
	case 1: return (void *)(UINTPTR_MAX - PSZ + 1);          /* wraps */
	case 2: return s->p ? s->p + 1 : (char *)plain + 1;        /* unaligned */
	case 3: return plain;                                      /* unmanaged */
	case 4: return foreign_mem;                                /* another context */
	case 5: return (void *)(uintptr_t)(u32(in) & ~(PSZ - 1));  /* anywhere */
	default:
		if (!s->p)
			return plain;
		*sp = s;
		return s->p + (u8(in) % s->npages) * PSZ;
	}
}

/* A length in bytes, good or bad. */
static size_t len_of(struct in *in, struct slot *s, void *a)
{
	uint8_t c = u8(in);
	switch (c % 8) {
	case 0: return 0;
	case 1: return PSZ + 1;
	case 2: return SIZE_MAX & ~(PSZ - 1);
	case 3: return (size_t)u32(in) * PSZ;
	default:
		if (s && s->p) {
			size_t left = s->npages - (size_t)((char *)a - s->p) / PSZ;
			return (1 + (c >> 3) % left) * PSZ;
		}
		return (1 + (c >> 3) % 4) * PSZ;
	}
}

static struct uhmm_device *dev_of(struct in *in)
{
	switch (u8(in) % 5) {
	case 0: return dA;
	case 1: return dB;
	case 2: return dForeign;
	case 3: return NULL;
	default: return dA;
	}
}

static bool failing; /* a fail flag is set on dA/dB: CPU faults may SIGBUS */

static void check_ret(const char *call, long r)
{
	if (r > 0 || r < -4095)
		die(call, r);
}

static void verify(struct slot *s)
{
	if (!s || !s->p || !s->rw || !s->known || failing)
		return;
	for (size_t i = 0; i < s->npages * PSZ; i += 512)
		if ((uint8_t)s->p[i] != s->fill)
			die("data mismatch", (long)i);
}

static void slot_clear(struct slot *s)
{
	if (!s->p)
		return;
	if (!s->rw)
		uhmm_mprotect(H, s->p, s->npages * PSZ, PROT_READ | PROT_WRITE);
	munmap(s->p, s->npages * PSZ);
	memset(s, 0, sizeof(*s));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!H)
		setup();
	struct in in = { data, size, 0 };
	struct uhmm_devmem *mems[MAXMEM] = { 0 };
	struct uhmm_migrate_result res;
	struct uhmm_page_info inf[64];
	uint8_t snap[64];
	int r;

	for (int steps = 0; in.i < in.n && steps < 64; steps++) {
		struct slot *s = NULL;
		uint8_t op = u8(&in);
		switch (op % 20) {
		case 0: { /* alloc into a slot */
			struct slot *t = &slots[u8(&in) % SLOTS];
			slot_clear(t);
			size_t np = 1 + u8(&in) % SLOTPG;
			void *p = NULL;
			r = uhmm_alloc(H, np * PSZ, &p);
			check_ret("uhmm_alloc", r);
			if (!r)
				*t = (struct slot){ p, np, true, true, 0, true };
			break;
		}
		case 1: { /* bad allocs */
			void *p = NULL;
			size_t l = len_of(&in, NULL, NULL);
			r = uhmm_alloc(u8(&in) & 1 ? H : NULL, l, (u8(&in) & 1) ? &p : NULL);
			check_ret("uhmm_alloc(bad)", r);
			if (!r && p)
				uhmm_free(H, p, l);
			break;
		}
		case 2: { /* free: good, partial, double, bad */
			void *a = addr_of(&in, &s);
			size_t l = len_of(&in, s, a);
			r = uhmm_free(H, a, l);
			check_ret("uhmm_free", r);
			if (!r && s) /* only our slots can be freed (a whole or part) */
				memset(s, 0, sizeof(*s)), s->p = NULL;
			break;
		}
		case 3: { /* adopt plain memory into a slot */
			struct slot *t = &slots[u8(&in) % SLOTS];
			slot_clear(t);
			size_t np = 1 + u8(&in) % SLOTPG;
			char *p = mmap(NULL, np * PSZ, PROT_READ | PROT_WRITE,
			               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED)
				break;
			uint8_t f = u8(&in);
			memset(p, f, np * PSZ);
			r = uhmm_range_add(H, p, np * PSZ);
			check_ret("uhmm_range_add", r);
			*t = (struct slot){ p, np, r == 0, true, f, true };
			r = uhmm_range_add(H, p, np * PSZ); /* again: -EEXIST */
			if (t->managed && r != -EEXIST)
				die("uhmm_range_add twice", r);
			break;
		}
		case 4: { /* range_add with bad arguments */
			void *a = addr_of(&in, &s);
			r = uhmm_range_add(u8(&in) % 7 ? H : NULL, a, len_of(&in, s, a));
			check_ret("uhmm_range_add(bad)", r);
			if (!r) /* it adopted something: only plain memory can be */
				uhmm_range_remove(H, a, PSZ);
			break;
		}
		case 5: { /* range_remove */
			void *a = addr_of(&in, &s);
			size_t l = len_of(&in, s, a);
			r = uhmm_range_remove(H, a, l);
			check_ret("uhmm_range_remove", r);
			if (!r && s)
				s->managed = false;
			verify(s);
			break;
		}
		case 6: case 7: { /* migrate */
			void *a = addr_of(&in, &s);
			size_t l = len_of(&in, s, a);
			memset(&res, 0xff, sizeof(res));
			r = uhmm_migrate(u8(&in) % 9 ? H : NULL, a, l, dev_of(&in),
			                 u8(&in) & 1 ? &res : NULL);
			check_ret("uhmm_migrate", r);
			break;
		}
		case 8: { /* query */
			void *a = addr_of(&in, &s);
			size_t np = u8(&in) % 70;
			r = uhmm_query(H, a, np, np <= 64 && (u8(&in) & 3) ? inf : NULL);
			check_ret("uhmm_query", r);
			break;
		}
		case 9: { /* CPU write + verify: faults pages home */
			struct slot *t = &slots[u8(&in) % SLOTS];
			if (!t->p || !t->rw || failing)
				break;
			verify(t);
			t->fill = u8(&in);
			memset(t->p, t->fill, t->npages * PSZ);
			t->known = true;
			break;
		}
		case 10: { /* device read / write */
			void *a = addr_of(&in, &s);
			size_t np = u8(&in) % 66;
			struct uhmm_device *d = dev_of(&in);
			bool wr = u8(&in) & 1;
			if (wr && s && s->rw) {
				np = np > s->npages ? s->npages : np;
				if ((size_t)((char *)a - s->p) / PSZ + np > s->npages)
					np = s->npages - (size_t)((char *)a - s->p) / PSZ;
				memset(buf, s->fill, 64 * PSZ);
				r = uhmm_dummy_write(d, a, buf, np, NULL);
			} else if (wr) {
				break; /* never write outside our own slots */
			} else {
				r = uhmm_dummy_read(d, a, u8(&in) % 5 ? buf : NULL, np > 64 ? 64 : np, NULL);
			}
			check_ret("uhmm_dummy_read/write", r);
			break;
		}
		case 11: { /* snapshot */
			void *a = addr_of(&in, &s);
			size_t np = u8(&in) % 66;
			r = uhmm_dummy_snapshot(dev_of(&in), a, np > 64 ? 64 : np, u8(&in) % 5 ? snap : NULL);
			check_ret("uhmm_dummy_snapshot", r);
			break;
		}
		case 12: /* release */
			r = uhmm_dummy_release(dev_of(&in));
			check_ret("uhmm_dummy_release", r);
			break;
		case 13: { /* fault injection (never LOST: see top) */
			uint32_t f = u32(&in);
			struct uhmm_device *d = u8(&in) & 1 ? dA : dB;
			if (f & UHMM_DUMMY_LOST)
				f = (f & 0xff) ? 1u << 20 : 0; /* an invalid bit instead */
			r = uhmm_dummy_set_fail(d, f & 0x1f ? f & (UHMM_DUMMY_FAIL_ALLOC | UHMM_DUMMY_FAIL_COPY) : f);
			check_ret("uhmm_dummy_set_fail", r);
			if (!r) {
				uhmm_dummy_set_fail(d, 0);
			}
			break;
		}
		case 14: { /* devmem add / remove */
			int k = u8(&in) % MAXMEM;
			if (mems[k]) {
				r = uhmm_devmem_remove(mems[k]);
				check_ret("uhmm_devmem_remove", r);
				if (!r)
					mems[k] = NULL;
				break;
			}
			size_t l = len_of(&in, NULL, NULL);
			if (l > (64u << 20))
				l = PSZ * (1 + l % 64) + (l & 1); /* keep it small, maybe unaligned */
			r = uhmm_devmem_add(dev_of(&in), l, u32(&in) & 0x1f, u8(&in) & 3 ? &mems[k] : NULL);
			check_ret("uhmm_devmem_add", r);
			break;
		}
		case 15: { /* exclusive */
			void *a = addr_of(&in, &s);
			if (!s || !s->rw)
				a = plain;
			r = uhmm_dummy_exclusive(dev_of(&in), a, 1 + u8(&in) % 4);
			check_ret("uhmm_dummy_exclusive", r);
			r = uhmm_dummy_check_exclusive(dev_of(&in), a, 1 + u8(&in) % 4);
			check_ret("uhmm_dummy_check_exclusive", r);
			break;
		}
		case 16: { /* mprotect through uhmm */
			struct slot *t = &slots[u8(&in) % SLOTS];
			int prot = u8(&in) % 4 == 0 ? PROT_NONE : u8(&in) & 1 ? PROT_READ : PROT_READ | PROT_WRITE;
			if (!t->p || !t->managed)
				break;
			r = uhmm_mprotect(H, t->p, t->npages * PSZ, prot);
			check_ret("uhmm_mprotect", r);
			if (!r)
				t->rw = prot == (PROT_READ | PROT_WRITE);
			r = uhmm_mprotect(H, t->p, t->npages * PSZ, (int)u32(&in));
			check_ret("uhmm_mprotect(bad prot)", r);
			uhmm_mprotect(H, t->p, t->npages * PSZ, t->rw ? PROT_READ | PROT_WRITE : PROT_NONE);
			break;
		}
		case 17: { /* madvise / munmap by the application */
			struct slot *t = &slots[u8(&in) % SLOTS];
			if (!t->p)
				break;
			if (u8(&in) & 1) {
				madvise(t->p, t->npages * PSZ, MADV_DONTNEED);
				t->fill = 0;
			} else {
				slot_clear(t);
			}
			break;
		}
		case 18: { /* stats, sysinfo, names on NULL */
			struct uhmm_stats st = UHMM_STATS_INIT;
			if (u8(&in) & 1) /* any sz that stays inside st */
				st.sz = u8(&in) % (sizeof(st) + 1);
			check_ret("uhmm_stats_get", uhmm_stats_get(u8(&in) & 1 ? H : NULL, u8(&in) & 1 ? &st : NULL));
			struct uhmm_dummy_counters c;
			check_ret("uhmm_dummy_counters_get",
			          uhmm_dummy_counters_get(dev_of(&in), u8(&in) & 1 ? &c : NULL));
			(void)uhmm_device_name(NULL);
			(void)uhmm_devmem_npages(NULL);
			break;
		}
		case 19: { /* options */
			struct uhmm_options o = UHMM_OPTIONS_INIT;
			memset(&o, 0, sizeof(o));
			o.sz = sizeof(o);
			o.fault_mode = (enum uhmm_fault_mode)(u8(&in) % 6);
			o.fault_around = u32(&in);
			o.flags = u32(&in) & 3;
			o.spin_us = 1;
			if (u8(&in) & 1) /* any sz that stays inside o */
				o.sz = u8(&in) % (sizeof(o) + 1);
			struct uhmm *x = NULL;
			r = uhmm_open(u8(&in) & 1 ? &o : NULL, u8(&in) % 5 ? &x : NULL);
			check_ret("uhmm_open", r);
			if (!r)
				check_ret("uhmm_close", uhmm_close(x));
			break;
		}
		}
		for (int k = 0; k < SLOTS; k++)
			if (!failing && u8(&in) % 16 == 0)
				verify(&slots[k]);
	}
	/* Clean up what this input created. */
	uhmm_dummy_set_fail(dA, 0);
	uhmm_dummy_set_fail(dB, 0);
	for (int k = 0; k < MAXMEM; k++)
		if (mems[k] && uhmm_devmem_remove(mems[k]))
			die("uhmm_devmem_remove at the end", k);
	for (int k = 0; k < SLOTS; k++) {
		verify(&slots[k]);
		slot_clear(&slots[k]);
	}
	return 0;
}
