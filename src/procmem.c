/* SPDX-License-Identifier: MIT */
/*
 * Access to the process's own memory that never faults: /proc/self/mem
 * reads and writes fail with EIO at a page that is not present (it does
 * not wait for userfaultfd, unlike process_vm_readv), so uhmm and the dummy
 * device can read managed memory while holding locks and survive a racing
 * munmap.  Plus /proc/self/maps (protections, private/anonymous) and
 * /proc/self/pagemap (is a page the shared zero page).
 */
#include "internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static _Atomic int g_memfd = -1;
static _Atomic pid_t g_mempid;

int procmem_fd(void)
{
	int fd = atomic_load(&g_memfd);
	pid_t pid = getpid();
	if (fd >= 0 && atomic_load(&g_mempid) == pid)
		return fd;
	int nfd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
	if (nfd < 0)
		return -errno;
	int expected = fd;
	if (atomic_compare_exchange_strong(&g_memfd, &expected, nfd)) {
		atomic_store(&g_mempid, pid);
		/* An fd inherited from the parent refers to the parent's memory:
		 * leave it to the parent's exit; only the child's own use changes. */
		return nfd;
	}
	close(nfd);
	return atomic_load(&g_memfd);
}

static ssize_t rw(bool write, void *buf, uintptr_t addr, size_t len)
{
	int fd = procmem_fd();
	if (fd < 0)
		return fd;
	size_t off = 0;
	while (off < len) {
		ssize_t n = write ? pwrite(fd, (char *)buf + off, len - off, (off_t)(addr + off))
		                  : pread(fd, (char *)buf + off, len - off, (off_t)(addr + off));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (off)
				break;
			return -errno;
		}
		if (n == 0)
			break;
		off += (size_t)n;
	}
	return (ssize_t)off;
}

ssize_t procmem_read(void *dst, uintptr_t src, size_t len)
{
	ssize_t r = rw(false, dst, src, len);
	TRACE(TR_PREAD, src, dst, len, (uint64_t)r);
	return r;
}

ssize_t procmem_write(uintptr_t dst, const void *src, size_t len)
{
	ssize_t r = rw(true, (void *)src, dst, len);
	TRACE(TR_PWRITE, dst, src, len, (uint64_t)r);
	return r;
}

/* Read a whole /proc file (they report size 0). */
static char *slurp(const char *path, size_t *lenp)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 16384, len = 0;
	char *buf = malloc(cap);
	while (buf) {
		if (len + 4096 > cap) {
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	if (buf) {
		buf[len] = 0;
		*lenp = len;
	}
	return buf;
}

int maps_query(uintptr_t start, uintptr_t end, struct vma_info *out, int max)
{
	size_t len;
	char *buf = slurp("/proc/self/maps", &len);
	if (!buf)
		return -ENOMEM;
	int n = 0;
	for (char *line = buf; line && *line && n < max;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		unsigned long s, e, off, ino;
		char perms[5] = { 0 };
		unsigned dmaj, dmin;
		int pos = 0;
		if (sscanf(line, "%lx-%lx %4s %lx %x:%x %lu%n", &s, &e, perms, &off, &dmaj, &dmin,
		           &ino, &pos) >= 7 && e > start && s < end) {
			const char *path = line + pos;
			while (*path == ' ')
				path++;
			struct vma_info *v = &out[n++];
			v->start = s;
			v->end = e;
			v->prot = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
			          (perms[2] == 'x' ? PROT_EXEC : 0);
			v->shared = perms[3] == 's';
			v->anon = ino == 0 && (*path == 0 || path[0] == '[');
			if (path[0] == '[' && strncmp(path, "[heap]", 6) && strncmp(path, "[anon", 5))
				v->anon = false; /* [stack], [vdso], [vvar]: not ours to manage */
		}
		line = nl ? nl + 1 : NULL;
	}
	free(buf);
	return n;
}

void prot_cache_init(struct prot_cache *c, uintptr_t start, uintptr_t end)
{
	c->n = -1;
	c->qs = start;
	c->qe = end;
}

const struct vma_info *vma_at(struct prot_cache *c, uintptr_t addr)
{
	for (int pass = 0; pass < 2; pass++) {
		if (c->n >= 0) {
			for (int i = 0; i < c->n; i++)
				if (addr >= c->v[i].start && addr < c->v[i].end)
					return &c->v[i];
			/* Not among the cached VMAs: a hole, unless the cache was full. */
			if (c->n < (int)(sizeof(c->v) / sizeof(c->v[0])) && addr >= c->qs && addr < c->qe)
				return NULL;
		}
		c->qs = addr;
		c->n = maps_query(addr, MAX(c->qe, addr + PAGE_SIZE), c->v,
		                  (int)(sizeof(c->v) / sizeof(c->v[0])));
		if (c->n < 0)
			return NULL;
	}
	return NULL;
}

int prot_at(struct prot_cache *c, uintptr_t addr)
{
	const struct vma_info *v = vma_at(c, addr);
	return v ? v->prot : -1;
}

/* As procmem_fd: an fd a forked child inherited describes the parent. */
static int pagemap_fd(void)
{
	static _Atomic int fd = -1;
	static _Atomic pid_t fd_pid;
	int f = atomic_load(&fd);
	pid_t pid = getpid();
	if (f >= 0 && atomic_load(&fd_pid) == pid)
		return f;
	int nf = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (nf < 0)
		return -1;
	if (atomic_compare_exchange_strong(&fd, &f, nf)) {
		atomic_store(&fd_pid, pid);
		return nf;
	}
	close(nf);
	return atomic_load(&fd);
}

int pages_present(uintptr_t addr, size_t n, bool *present)
{
	uint64_t ent[64];
	int f = pagemap_fd();
	if (f < 0)
		return -EIO;
	for (size_t done = 0; done < n;) {
		size_t k = MIN(n - done, (size_t)64);
		off_t off = (off_t)(((addr >> PAGE_SHIFT) + done) * sizeof(ent[0]));
		if (pread(f, ent, k * sizeof(ent[0]), off) != (ssize_t)(k * sizeof(ent[0])))
			return -EIO;
		for (size_t i = 0; i < k; i++)
			present[done + i] = ent[i] >> 63 & 1;
		done += k;
	}
	return 0;
}

int pagemap_read(uintptr_t addr, size_t n, uint64_t *out)
{
	int f = pagemap_fd();
	if (f < 0)
		return -EIO;
	ssize_t want = (ssize_t)(n * sizeof(out[0]));
	if (pread(f, out, (size_t)want, (off_t)((addr >> PAGE_SHIFT) * sizeof(out[0]))) != want)
		return -EIO;
	return 0;
}

int page_is_zero(uintptr_t addr)
{
	int f = pagemap_fd();
	if (f < 0)
		return -1;
	uint64_t ent;
	if (pread(f, &ent, sizeof(ent), (off_t)((addr >> PAGE_SHIFT) * sizeof(ent))) != sizeof(ent))
		return -1;
	bool present = ent >> 63 & 1, exclusive = ent >> 56 & 1, file = ent >> 61 & 1;
	/* The zero page has no struct page mapping: present, not exclusive, not file. */
	return present && !exclusive && !file;
}
