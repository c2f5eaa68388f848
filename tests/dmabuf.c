/* SPDX-License-Identifier: MIT */
/*
 * Device DMA buffers (uhmm_device_ops.dma_buf_get / dma_buf_put): a copy
 * device that lends buffers gets them back as copy_to_device's src and
 * copy_from_device's dst, every buffer lent is returned, data is exact,
 * and a device with none free is served from uhmm's own buffers.
 */
#include "testdev.h"

#define NBUF 2

static char *g_bufs;         /* NBUF * UHMM_DMA_BUF_BYTES */
static atomic_uint g_busy;   /* bit i: buffer i lent */
static atomic_bool g_refuse; /* dma_buf_get returns NULL */
static atomic_ulong g_gets, g_puts, g_bad;
static atomic_ulong g_src_lent, g_src_other, g_dst_lent, g_dst_other;

static bool lent(const void *p, size_t npages)
{
	const char *c = p;
	for (int i = 0; i < NBUF; i++) {
		const char *b = g_bufs + (size_t)i * UHMM_DMA_BUF_BYTES;
		if ((atomic_load(&g_busy) & (1u << i)) && c >= b && c + npages * PS() <= b + UHMM_DMA_BUF_BYTES)
			return true;
	}
	return false;
}

static void *dma_get(struct uhmm_device *d)
{
	(void)d;
	if (atomic_load(&g_refuse))
		return NULL;
	for (int i = 0; i < NBUF; i++)
		if (!(atomic_fetch_or(&g_busy, 1u << i) & (1u << i))) {
			atomic_fetch_add(&g_gets, 1);
			return g_bufs + (size_t)i * UHMM_DMA_BUF_BYTES;
		}
	return NULL;
}

static void dma_put(struct uhmm_device *d, void *buf)
{
	(void)d;
	size_t off = (size_t)((char *)buf - g_bufs);
	unsigned i = (unsigned)(off / UHMM_DMA_BUF_BYTES);
	if (off % UHMM_DMA_BUF_BYTES || i >= NBUF || !(atomic_load(&g_busy) & (1u << i))) {
		atomic_fetch_add(&g_bad, 1);
		return;
	}
	atomic_fetch_and(&g_busy, ~(1u << i));
	atomic_fetch_add(&g_puts, 1);
}

static int copy_to(struct uhmm_device *d, struct uhmm_devmem *m, const size_t *idx,
                   const void *src, size_t npages)
{
	atomic_fetch_add(lent(src, npages) ? &g_src_lent : &g_src_other, 1);
	return tdev_copy_to(d, m, idx, src, npages);
}

static int copy_from(struct uhmm_device *d, void *dst, struct uhmm_devmem *m, const size_t *idx,
                     size_t npages)
{
	atomic_fetch_add(lent(dst, npages) ? &g_dst_lent : &g_dst_other, 1);
	return tdev_copy_from(d, dst, m, idx, npages);
}

/* A copy device (the tdev store) that lends DMA buffers. */
static struct tdev *dmadev_create(struct uhmm *h, size_t npages)
{
	struct tdev *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	t->npages = npages;
	t->freed = calloc(npages, sizeof(*t->freed));
	t->store = malloc(npages * PS());
	assert_non_null(t->freed);
	assert_non_null(t->store);
	struct uhmm_device_ops ops;
	memset(&ops, 0, sizeof(ops));
	ops.copy_to_device = copy_to;
	ops.copy_from_device = copy_from;
	ops.page_free = tdev_page_free;
	ops.dma_buf_get = dma_get;
	ops.dma_buf_put = dma_put;
	assert_int_equal(uhmm_device_create(h, "test-dma", &ops, 0, t, &t->dev), 0);
	assert_int_equal(uhmm_devmem_add(t->dev, npages * PS(),
	                                 UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE,
	                                 &t->m), 0);
	return t;
}

static int setup(void **state)
{
	(void)state;
	g_bufs = aligned_alloc(4096, NBUF * (size_t)UHMM_DMA_BUF_BYTES);
	atomic_store(&g_busy, 0);
	atomic_store(&g_refuse, false);
	atomic_store(&g_gets, 0);
	atomic_store(&g_puts, 0);
	atomic_store(&g_bad, 0);
	atomic_store(&g_src_lent, 0);
	atomic_store(&g_src_other, 0);
	atomic_store(&g_dst_lent, 0);
	atomic_store(&g_dst_other, 0);
	return g_bufs ? 0 : -1;
}

static int teardown(void **state)
{
	t_teardown(state);
	free(g_bufs);
	g_bufs = NULL;
	return 0;
}

/* Both directions (migration and CPU faults) go through the lent buffers. */
static void dmabuf_used_both_ways(void **state)
{
	struct uhmm *h = t_open(state);
	const size_t n = 1200; /* several 512-page runs */
	struct tdev *t = dmadev_create(h, n);
	void *p = t_alloc(h, n);
	fill_pages(p, 0, n, 21);
	assert_migrate(h, p, n * PS(), t->dev, n, 0);
	assert_true(atomic_load(&g_src_lent) >= 3);
	assert_int_equal(atomic_load(&g_src_other), 0);
	assert_int_equal(tdev_count_pattern_pages(t, n, 21), n);
	assert_migrate(h, p, n / 2 * PS(), NULL, n / 2, 0);
	assert_pages(p, n / 2, n - n / 2, 21); /* the rest by CPU faults */
	assert_pages(p, 0, n, 21);
	assert_true(atomic_load(&g_dst_lent) >= 2);
	assert_int_equal(atomic_load(&g_dst_other), 0);
	assert_int_equal(atomic_load(&g_gets), atomic_load(&g_puts));
	assert_int_equal(atomic_load(&g_busy), 0);
	assert_int_equal(atomic_load(&g_bad), 0);
	assert_int_equal(atomic_load(&t->bad), 0);
	t_close(h);
	tdev_free(t);
}

/* None free: uhmm copies through its own buffers; nothing is lost. */
static void dmabuf_none_free(void **state)
{
	struct uhmm *h = t_open(state);
	const size_t n = 700;
	struct tdev *t = dmadev_create(h, n);
	atomic_store(&g_refuse, true);
	void *p = t_alloc(h, n);
	fill_pages(p, 0, n, 22);
	assert_migrate(h, p, n * PS(), t->dev, n, 0);
	assert_pages(p, 0, n, 22);
	assert_int_equal(atomic_load(&g_src_lent) + atomic_load(&g_dst_lent), 0);
	assert_true(atomic_load(&g_src_other) >= 2 && atomic_load(&g_dst_other) >= 1);
	assert_int_equal(atomic_load(&g_gets), 0);
	t_close(h);
	tdev_free(t);
}

/* get without put (or put without get) is refused. */
static void dmabuf_ops_pair(void **state)
{
	struct uhmm *h = t_open(state);
	struct uhmm_device_ops ops;
	struct uhmm_device *d = NULL;
	memset(&ops, 0, sizeof(ops));
	ops.copy_to_device = copy_to;
	ops.copy_from_device = copy_from;
	ops.dma_buf_get = dma_get;
	assert_int_equal(uhmm_device_create(h, "half", &ops, 0, NULL, &d), -EINVAL);
	ops.dma_buf_get = NULL;
	ops.dma_buf_put = dma_put;
	assert_int_equal(uhmm_device_create(h, "half", &ops, 0, NULL, &d), -EINVAL);
	assert_null(d);
	t_close(h);
}

#define TEST_DMA(f, mode) { #f "/" #mode, f, setup, teardown, &mode_##mode }

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST_DMA(dmabuf_used_both_ways, thread),
		TEST_DMA(dmabuf_used_both_ways, sigbus),
		TEST_DMA(dmabuf_none_free, thread),
		TEST_DMA(dmabuf_none_free, sigbus),
		TEST_DMA(dmabuf_ops_pair, thread),
	};
	return cmocka_run_group_tests_name("dmabuf", tests, NULL, NULL);
}
