/* SPDX-License-Identifier: MIT */
/*
 * A device backend driving the uhmm mirror (docs/MIRROR.md): a host-backed
 * device with private memory and its own page table, kept in sync with the
 * CPU by the invalidate callback and the read_begin/read_retry protocol.
 *
 * main() migrates a buffer to the device, reads it through the mirror,
 * writes some pages on the CPU (which faults them home and invalidates the
 * device's entries) and reads again: the re-faulted data must be the CPU's.
 * Exits 1 on any mismatch or error.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* process_vm_readv */
#endif
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <uhmm.h>

#define NPAGES 64

/* ---- the backend ---- */

struct mydev {
	struct uhmm_device *dev;
	struct uhmm_mirror *mirror;
	pthread_mutex_t lock;        /* guards pt; never held while touching managed memory */
	uintptr_t base;              /* the range this device mirrors: NPAGES pages */
	size_t pg;
	struct uhmm_range_entry pt[NPAGES]; /* device page table; flags 0 = not mapped */
	unsigned long invalidations, fault_rounds;
};

/* May run on uhmm's service thread or in a SIGBUS handler: no malloc, no waiting. */
static void my_invalidate(struct uhmm_mirror *m, uintptr_t start, uintptr_t end,
                          enum uhmm_event ev)
{
	struct mydev *md = uhmm_mirror_priv(m);
	uintptr_t lo = start > md->base ? start : md->base;
	uintptr_t hi = end < md->base + NPAGES * md->pg ? end : md->base + NPAGES * md->pg;

	(void)ev; /* every event means the same here: forget the mappings */
	pthread_mutex_lock(&md->lock);
	md->invalidations++;
	for (uintptr_t a = lo; a < hi; a += md->pg)
		md->pt[(a - md->base) / md->pg].flags = 0;
	pthread_mutex_unlock(&md->lock);
}

/* The device reads n pages at addr into buf. */
static int device_read(struct mydev *md, const char *addr, char *buf, size_t n)
{
	struct uhmm_range_entry ent[NPAGES];
	size_t first = ((uintptr_t)addr - md->base) / md->pg, i;

again:
	pthread_mutex_lock(&md->lock);
	for (i = 0; i < n && md->pt[first + i].flags; i++)
		;
	if (i < n) { /* a device page fault: (re)build the entries */
		pthread_mutex_unlock(&md->lock);
		for (;;) {
			uint64_t seq = uhmm_mirror_read_begin(md->mirror); /* again on every retry */
			int rc = uhmm_range_fault(md->mirror, addr, n, UHMM_RANGE_READ, ent);

			if (rc < 0)
				return rc; /* -EFAULT: no access */
			pthread_mutex_lock(&md->lock);
			if (!uhmm_mirror_read_retry(md->mirror, seq))
				break;
			pthread_mutex_unlock(&md->lock);
		}
		memcpy(&md->pt[first], ent, n * sizeof(ent[0]));
		md->fault_rounds++;
	}
	memcpy(ent, &md->pt[first], n * sizeof(ent[0]));
	/* Pages in device memory: copied under the lock (the page leaving waits). */
	for (i = 0; i < n; i++)
		if (ent[i].flags & UHMM_ENTRY_DEVICE_LOCAL)
			memcpy(buf + i * md->pg, uhmm_devmem_host_addr(ent[i].mem, ent[i].index), md->pg);
	pthread_mutex_unlock(&md->lock);
	/* Pages in system memory: through the process's page tables, lock not held. */
	for (i = 0; i < n; i++) {
		struct iovec l = { buf + i * md->pg, md->pg };
		struct iovec r = { (void *)(addr + i * md->pg), md->pg };

		if (ent[i].flags & UHMM_ENTRY_DEVICE_LOCAL)
			continue;
		if (ent[i].flags & UHMM_ENTRY_ZERO)
			memset(buf + i * md->pg, 0, md->pg);
		else if (process_vm_readv(getpid(), &l, 1, &r, 1, 0) != (ssize_t)md->pg)
			goto again; /* the page moved meanwhile: its entry was invalidated */
	}
	return 0;
}

/* ---- using it ---- */

#define CHECK(call) do { int rc_ = (call); if (rc_ < 0) { \
	fprintf(stderr, "%s: %s\n", #call, strerror(-rc_)); return 1; } } while (0)

static char expect(size_t page, size_t off, int written)
{
	return written ? 'W' : (char)('a' + (page + off) % 26);
}

static int check(const char *buf, size_t pg, size_t nwritten, const char *when)
{
	for (size_t p = 0; p < NPAGES; p++)
		for (size_t o = 0; o < pg; o++)
			if (buf[p * pg + o] != expect(p, o, p < nwritten)) {
				fprintf(stderr, "%s: page %zu offset %zu: got 0x%02x\n", when, p, o,
				        (unsigned char)buf[p * pg + o]);
				return 1;
			}
	return 0;
}

static size_t count(struct mydev *md, unsigned flag)
{
	size_t n = 0;

	pthread_mutex_lock(&md->lock);
	for (size_t i = 0; i < NPAGES; i++)
		n += (md->pt[i].flags & flag) != 0;
	pthread_mutex_unlock(&md->lock);
	return n;
}

int main(void)
{
	static struct mydev md = { .lock = PTHREAD_MUTEX_INITIALIZER };
	static char buf[NPAGES * 65536];
	static const struct uhmm_device_ops ops = { 0 }; /* HOST_BACKED: no copy ops */
	static const struct uhmm_mirror_ops mops = { .invalidate = my_invalidate };
	const size_t nwritten = 8;
	struct uhmm *h;
	struct uhmm_devmem *mem;
	struct uhmm_migrate_result res;
	unsigned long inv0;
	size_t len;
	char *p;

	md.pg = (size_t)sysconf(_SC_PAGESIZE);
	len = NPAGES * md.pg;
	if (len > sizeof(buf))
		return 1;
	CHECK(uhmm_open(NULL, &h));
	CHECK(uhmm_device_create(h, "mirror-dev", &ops, UHMM_DEVICE_HOST_BACKED, &md, &md.dev));
	CHECK(uhmm_devmem_add(md.dev, len, UHMM_DEVMEM_ALLOW_MIGRATION | UHMM_DEVMEM_UNADDRESSABLE,
	                      &mem));
	CHECK(uhmm_mirror_register(md.dev, &mops, &md, &md.mirror));
	CHECK(uhmm_alloc(h, len, (void **)&p));
	md.base = (uintptr_t)p;
	for (size_t i = 0; i < len; i++)
		p[i] = expect(i / md.pg, i % md.pg, 0);

	CHECK(uhmm_migrate(h, p, len, md.dev, &res));
	printf("migrated %zu pages to the device (%zu skipped)\n", res.migrated, res.skipped);
	CHECK(device_read(&md, p, buf, NPAGES));
	CHECK(device_read(&md, p, buf, NPAGES)); /* page table hit: no fault round */
	printf("device read: %zu pages local, %lu fault round(s)\n",
	       count(&md, UHMM_ENTRY_DEVICE_LOCAL), md.fault_rounds);
	if (res.migrated != NPAGES || md.fault_rounds != 1 ||
	    count(&md, UHMM_ENTRY_DEVICE_LOCAL) != NPAGES || check(buf, md.pg, 0, "first read"))
		return 1;

	inv0 = md.invalidations;
	for (size_t i = 0; i < nwritten * md.pg; i++)
		p[i] = 'W'; /* CPU faults: pages come home, the mirror is invalidated first */
	printf("CPU wrote %zu pages: %lu invalidation(s), %zu pages still mapped by the device\n",
	       nwritten, md.invalidations - inv0, count(&md, ~0u));
	CHECK(device_read(&md, p, buf, NPAGES));
	printf("device re-read: %zu pages local, %zu in system memory, %lu fault round(s)\n",
	       count(&md, UHMM_ENTRY_DEVICE_LOCAL), count(&md, UHMM_ENTRY_VALID), md.fault_rounds);
	if (md.invalidations == inv0 || md.fault_rounds != 2 ||
	    check(buf, md.pg, nwritten, "re-read"))
		return 1;

	CHECK(uhmm_free(h, p, len));
	printf("after uhmm_free: %zu device pages in use\n", uhmm_devmem_used(mem));
	if (uhmm_devmem_used(mem) != 0)
		return 1;
	CHECK(uhmm_close(h));
	printf("OK\n");
	return 0;
}
