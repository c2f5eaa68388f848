/* SPDX-License-Identifier: MIT */
/*
 * Sized structs (include/uhmm.h, "How the ABI evolves"): the sz each
 * caller-allocated struct starts with is checked, a newer caller's larger
 * struct is accepted only with a zero tail, and an output struct is
 * written no further than the caller's sz.
 */
#include "uhmm_cuda.h"

#include "testdev.h"

#define END(type, field) (offsetof(struct type, field) + sizeof(((struct type *)0)->field))

/* The first versions: what a binary built against this release passes. */
#define OPTIONS_V1 END(uhmm_options, reserved)
#define STATS_V1   END(uhmm_stats, pages_ahead)
#define SYSINFO_V1 END(uhmm_sysinfo, reserved)
#define DUMMY_V1   END(uhmm_dummy_options, path)
#define CUDA_OPTIONS_V1 END(uhmm_cuda_options, reserved)
#define CUDA_INFO_V1    END(uhmm_cuda_info, reason)

/* Room for a struct of a newer header: ours plus fields we do not know. */
#define TAIL 64
union big {
	size_t sz;
	unsigned char b[sizeof(struct uhmm_sysinfo) + sizeof(struct uhmm_cuda_info) + TAIL];
};

static void all_bytes(const unsigned char *p, size_t from, size_t to, unsigned char v)
{
	for (size_t i = from; i < to; i++)
		if (p[i] != v)
			fail_msg("byte %zu is 0x%02x, expected 0x%02x", i, p[i], v);
}

static void options_sz(void **state)
{
	(void)state;
	struct uhmm *h = NULL;
	union big u;

	/* NULL: defaults. */
	assert_int_equal(uhmm_open(NULL, &h), 0);
	assert_int_equal(uhmm_close(h), 0);
	h = NULL;

	UHMM_OPTS(uhmm_options, o, .fault_mode = UHMM_FAULT_THREAD);
	assert_int_equal(o.sz, sizeof(struct uhmm_options));
	o.sz = 0;
	assert_int_equal(uhmm_open(&o, &h), -EINVAL);
	o.sz = OPTIONS_V1 - 1;
	assert_int_equal(uhmm_open(&o, &h), -EINVAL);
	o.sz = UHMM_SZ_MAX + 1;
	assert_int_equal(uhmm_open(&o, &h), -EINVAL);
	assert_null(h);

	/* Exactly the first version, padding left out: accepted, and read. */
	o.sz = OPTIONS_V1;
	assert_int_equal(uhmm_open(&o, &h), 0);
	assert_int_equal(uhmm_fault_mode(h), UHMM_FAULT_THREAD);
	assert_int_equal(uhmm_close(h), 0);

	/* A newer caller that sets nothing new: accepted, its fields read. */
	memset(&u, 0, sizeof(u));
	memcpy(u.b, &o, OPTIONS_V1);
	u.sz = sizeof(struct uhmm_options) + TAIL;
	h = NULL;
	assert_int_equal(uhmm_open((const struct uhmm_options *)u.b, &h), 0);
	assert_int_equal(uhmm_fault_mode(h), UHMM_FAULT_THREAD);
	assert_int_equal(uhmm_close(h), 0);

	/* ... that sets a field this library does not know: refused. */
	u.b[u.sz - 1] = 1;
	h = NULL;
	assert_int_equal(uhmm_open((const struct uhmm_options *)u.b, &h), -EINVAL);
	assert_null(h);
	u.b[u.sz - 1] = 0;
	u.b[OPTIONS_V1] = 1;
	assert_int_equal(uhmm_open((const struct uhmm_options *)u.b, &h), -EINVAL);
	assert_null(h);

	/* reserved holds the tail padding's place (a later field's): 0 only. */
	o.sz = sizeof(o);
	o.reserved = 1;
	assert_int_equal(uhmm_open(&o, &h), -EINVAL);
	assert_null(h);
	/* Every member named: no padding is left for the check to trip on. */
	struct uhmm_options all = { .sz = sizeof(all), .fault_mode = UHMM_FAULT_THREAD,
	                            .fault_around = 0, .flags = 0, .spin_us = 0,
	                            .fault_ahead = 0, .reserved = 0 };
	assert_int_equal(uhmm_open(&all, &h), 0);
	assert_int_equal(uhmm_close(h), 0);
}

static void stats_sz(void **state)
{
	(void)state;
	struct uhmm *h = NULL;
	union big u;
	assert_int_equal(uhmm_open(NULL, &h), 0);

	/* Something to count: one zero-fill fault. */
	char *p;
	assert_int_equal(uhmm_alloc(h, PS(), (void **)&p), 0);
	*(volatile char *)p = 1;
	struct uhmm_stats ref = UHMM_STATS_INIT;
	assert_int_equal(uhmm_stats_get(h, &ref), 0);
	assert_true(ref.cpu_faults >= 1);

	struct uhmm_stats st;
	memset(&st, 0, sizeof(st));
	assert_int_equal(uhmm_stats_get(h, &st), -EINVAL); /* sz 0 */
	st.sz = STATS_V1 - 1;
	assert_int_equal(uhmm_stats_get(h, &st), -EINVAL);

	/* The first version's size: filled up to sz and not a byte further. */
	memset(&u, 0xAA, sizeof(u));
	u.sz = STATS_V1;
	assert_int_equal(uhmm_stats_get(h, (struct uhmm_stats *)u.b), 0);
	all_bytes(u.b, STATS_V1, sizeof(u), 0xAA);
	memcpy(&st, u.b, STATS_V1);
	assert_int_equal(st.sz, STATS_V1);
	assert_int_equal(st.cpu_faults, ref.cpu_faults);
	assert_int_equal(st.pages_zero_filled, ref.pages_zero_filled);

	/* Larger with a zero tail: the tail is left as it was (zero). */
	memset(&u, 0, sizeof(u));
	u.sz = sizeof(struct uhmm_stats) + TAIL;
	assert_int_equal(uhmm_stats_get(h, (struct uhmm_stats *)u.b), 0);
	all_bytes(u.b, STATS_V1, sizeof(u), 0);
	memcpy(&st, u.b, STATS_V1);
	assert_int_equal(st.cpu_faults, ref.cpu_faults);

	/* A non-zero tail byte: refused, nothing written. */
	memset(&u, 0, sizeof(u));
	u.sz = sizeof(struct uhmm_stats) + TAIL;
	u.b[u.sz - 1] = 0x5A;
	assert_int_equal(uhmm_stats_get(h, (struct uhmm_stats *)u.b), -EINVAL);
	all_bytes(u.b, sizeof(size_t), u.sz - 1, 0);

	assert_int_equal(uhmm_free(h, p, PS()), 0);
	assert_int_equal(uhmm_close(h), 0);
}

static void sysinfo_sz(void **state)
{
	(void)state;
	union big u;

	struct uhmm_sysinfo si;
	memset(&si, 0, sizeof(si));
	assert_int_equal(uhmm_sysinfo_get(&si), -EINVAL); /* sz 0 */
	si.sz = SYSINFO_V1 - 1;
	assert_int_equal(uhmm_sysinfo_get(&si), -EINVAL);
	si.sz = UHMM_SZ_MAX + 1;
	assert_int_equal(uhmm_sysinfo_get(&si), -EINVAL);

	memset(&u, 0xAA, sizeof(u));
	u.sz = SYSINFO_V1;
	assert_int_equal(uhmm_sysinfo_get((struct uhmm_sysinfo *)u.b), 0);
	all_bytes(u.b, SYSINFO_V1, sizeof(u), 0xAA);
	memcpy(&si, u.b, SYSINFO_V1);
	assert_true(si.reason[0] != '\0');
	all_bytes((const unsigned char *)si.reserved, 0, sizeof(si.reserved), 0);
	assert_non_null(memchr(si.reason, '\0', sizeof(si.reason)));

	memset(&u, 0, sizeof(u));
	u.sz = sizeof(struct uhmm_sysinfo) + TAIL;
	assert_int_equal(uhmm_sysinfo_get((struct uhmm_sysinfo *)u.b), 0);
	all_bytes(u.b, SYSINFO_V1, sizeof(u), 0);

	memset(&u, 0, sizeof(u));
	u.sz = sizeof(struct uhmm_sysinfo) + TAIL;
	u.b[sizeof(struct uhmm_sysinfo)] = 1;
	assert_int_equal(uhmm_sysinfo_get((struct uhmm_sysinfo *)u.b), -EINVAL);
	all_bytes(u.b, sizeof(size_t), sizeof(struct uhmm_sysinfo), 0);
}

static void dummy_options_sz(void **state)
{
	(void)state;
	struct uhmm *h = NULL;
	struct uhmm_device *d = NULL;
	union big u;
	assert_int_equal(uhmm_open(NULL, &h), 0);

	/* NULL: defaults. */
	assert_int_equal(uhmm_dummy_create(h, NULL, &d), 0);
	assert_int_equal(uhmm_device_destroy(d), 0);

	UHMM_OPTS(uhmm_dummy_options, o, .devmem_flags = UHMM_DEVMEM_DEVICE);
	o.sz = 0;
	d = NULL;
	assert_int_equal(uhmm_dummy_create(h, &o, &d), -EINVAL);
	o.sz = DUMMY_V1 - 1;
	assert_int_equal(uhmm_dummy_create(h, &o, &d), -EINVAL);
	assert_null(d);

	/* Larger, zero tail: accepted and read (persistent memory: DEVICE only). */
	memset(&u, 0, sizeof(u));
	memcpy(u.b, &o, DUMMY_V1);
	u.sz = sizeof(struct uhmm_dummy_options) + TAIL;
	assert_int_equal(uhmm_dummy_create(h, (const struct uhmm_dummy_options *)u.b, &d), 0);
	assert_int_equal(uhmm_devmem_flags(uhmm_dummy_devmem(d)), UHMM_DEVMEM_DEVICE);
	assert_int_equal(uhmm_device_destroy(d), 0);

	u.b[u.sz - 1] = 1;
	d = NULL;
	assert_int_equal(uhmm_dummy_create(h, (const struct uhmm_dummy_options *)u.b, &d), -EINVAL);
	assert_null(d);
	assert_int_equal(uhmm_close(h), 0);
}

/* The CUDA structs are checked before the driver is looked at, so these
 * hold with or without a GPU. */
static void cuda_sz(void **state)
{
	(void)state;
	struct uhmm *h = NULL;
	struct uhmm_device *d = NULL;
	union big u;
	assert_int_equal(uhmm_open(NULL, &h), 0);

	UHMM_OPTS(uhmm_cuda_options, o, .capacity = 0);
	o.sz = 0;
	assert_int_equal(uhmm_cuda_create(h, 0, &o, &d), -EINVAL);
	o.sz = CUDA_OPTIONS_V1 - 1;
	assert_int_equal(uhmm_cuda_create(h, 0, &o, &d), -EINVAL);
	memset(&u, 0, sizeof(u));
	memcpy(u.b, &o, CUDA_OPTIONS_V1);
	u.sz = sizeof(struct uhmm_cuda_options) + TAIL;
	u.b[u.sz - 1] = 1;
	assert_int_equal(uhmm_cuda_create(h, 0, (const struct uhmm_cuda_options *)u.b, &d), -EINVAL);
	assert_null(d);
	o.sz = sizeof(o);
	o.reserved = 1;
	assert_int_equal(uhmm_cuda_create(h, 0, &o, &d), -EINVAL);
	assert_null(d);

	struct uhmm_cuda_info ci;
	memset(&ci, 0, sizeof(ci));
	assert_int_equal(uhmm_cuda_available(&ci), -EINVAL); /* sz 0 */
	memset(&u, 0xAA, sizeof(u));
	u.sz = CUDA_INFO_V1;
	(void)uhmm_cuda_available((struct uhmm_cuda_info *)u.b); /* 0 or why not */
	all_bytes(u.b, CUDA_INFO_V1, sizeof(u), 0xAA);

	struct uhmm_cuda_stats cs = UHMM_CUDA_STATS_INIT;
	assert_int_equal(cs.sz, sizeof(cs));
	assert_int_equal(uhmm_close(h), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_ONE(options_sz),
		TEST_ONE(stats_sz),
		TEST_ONE(sysinfo_sz),
		TEST_ONE(dummy_options_sz),
		TEST_ONE(cuda_sz),
	};
	return cmocka_run_group_tests_name("abi_structs", tests, NULL, NULL);
}
