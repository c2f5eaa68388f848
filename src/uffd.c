/* SPDX-License-Identifier: MIT */
/*
 * Thin userfaultfd layer: opening with the best access this process has,
 * feature negotiation, and ioctl wrappers that finish partial operations.
 *
 * Operations that install pages never wake waiters themselves: the caller
 * publishes the page's new state first and then wakes (wake_range), so a
 * woken thread finds its page's state and the counters already updated.
 *
 * Debian 12 ships 6.1 UAPI headers: UFFDIO_MOVE, UFFDIO_POISON and their
 * feature bits are defined here when missing and probed at run time.
 */
#include "internal.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE 0x05
struct uffdio_move {
	__u64 dst;
	__u64 src;
	__u64 len;
	__u64 mode;
	__s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON 0x08
struct uffdio_poison {
	struct uffdio_range range;
	__u64 mode;
	__s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

static int xioctl(int fd, unsigned long req, void *arg)
{
	return ioctl(fd, req, arg) < 0 ? -errno : 0;
}

void uffd_open_best(struct uffd_probe *p, int flags)
{
	memset(p, 0, sizeof(*p));
	p->fd = (int)syscall(SYS_userfaultfd, flags);
	if (p->fd >= 0) {
		p->kernel_faults = true;
		snprintf(p->how, sizeof(p->how), "userfaultfd(2), kernel-mode faults allowed%s",
		         geteuid() == 0 ? " (root)" : "");
		return;
	}
	int first = errno;
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev >= 0) {
		p->fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
		int e = errno;
		close(dev);
		if (p->fd >= 0) {
			p->kernel_faults = true;
			p->via_dev = true;
			snprintf(p->how, sizeof(p->how), "/dev/userfaultfd, kernel-mode faults allowed");
			return;
		}
		(void)e;
	}
	p->fd = (int)syscall(SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY);
	if (p->fd >= 0) {
		snprintf(p->how, sizeof(p->how),
		         "userfaultfd(2) with UFFD_USER_MODE_ONLY: faults inside syscalls are not served");
		return;
	}
	p->err = errno == EINVAL ? first : errno;
	snprintf(p->how, sizeof(p->how), "unavailable: %s", strerror(p->err));
}

int uffd_api(int fd, uint64_t want, uint64_t *got)
{
	struct uffdio_api api = { .api = UFFD_API, .features = want };
	int r = xioctl(fd, UFFDIO_API, &api);
	if (got)
		*got = r ? 0 : api.features;
	return r;
}

int uffd_register(int fd, uintptr_t start, size_t len, bool wp, uint64_t *ioctls)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING | (wp ? UFFDIO_REGISTER_MODE_WP : 0),
	};
	int r = xioctl(fd, UFFDIO_REGISTER, &reg);
	TRACE(TR_REG, start, wp, len, (uint16_t)-r);
	if (ioctls)
		*ioctls = r ? 0 : reg.ioctls;
	return r;
}

int uffd_register_wp_only(int fd, uintptr_t start, size_t len)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = len },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};
	return xioctl(fd, UFFDIO_REGISTER, &reg);
}

int uffd_unregister(int fd, uintptr_t start, size_t len)
{
	struct uffdio_range range = { .start = start, .len = len };
	int r = xioctl(fd, UFFDIO_UNREGISTER, &range);
	TRACE(TR_UNREG, start, 0, len, (uint16_t)-r);
	return r;
}

/* The kernel may stop early (EAGAIN when the mm is changing, or a
 * fatal-signal check); continue from where it stopped. */
/*
 * The kernel may stop early (EAGAIN when the mm is changing, or a
 * fatal-signal check); continue from where it stopped.  A call is refused
 * whole (EINVAL, ENOENT) when it spans two VMAs — a managed range split by
 * mprotect, or being unmapped — so on a failure with no progress the next
 * page is tried alone: only a page that fails by itself is a failure.
 */
/* Set on the service thread: EAGAIN means an event is waiting to be read,
 * and only this thread reads events, so it must not wait for it. */
static __thread bool tls_no_wait __attribute__((tls_model("initial-exec")));
static __thread bool tls_service __attribute__((tls_model("initial-exec")));

void uffd_set_service_thread(void)
{
	tls_service = true;
	tls_no_wait = true;
}

void uffd_nowait(bool on)
{
	if (!tls_service)
		tls_no_wait = on;
}

#define UFFD_LOOP(call, field)                                                        \
	size_t off = 0, chunk;                                                        \
	int r = 0, again = 0;                                                         \
	bool single = false;                                                          \
	while (off < len) {                                                           \
		chunk = single ? PAGE_SIZE : len - off;                               \
		long long got = 0;                                                    \
		r = call;                                                             \
		if (got > 0)                                                          \
			off += (size_t)got;                                           \
		/* EAGAIN: stopped short (progress made), or the mm is changing \
		 * (no progress; only the event's reader can end that). */  \
		if (r == -EAGAIN && (!tls_no_wait || got > 0))                        \
			continue;                                                     \
		if (r == -EAGAIN)                                                     \
			break;                                                        \
		if (!r) {                                                             \
			single = false;                                               \
			continue;                                                     \
		}                                                                     \
		if (got <= 0 && !single && len - off > PAGE_SIZE && r != -EEXIST &&    \
		    r != -EBUSY) {                                                    \
			single = true;                                                \
			continue;                                                     \
		}                                                                     \
		if (r == -EBUSY && ++again < 3)                                       \
			continue;                                                     \
		break;                                                                \
	}                                                                             \
	if (done)                                                                     \
		*done = off;                                                          \
	return off == len ? 0 : (r ? r : -EIO)

static int zp1(int fd, uintptr_t dst, size_t len, long long *got)
{
	struct uffdio_zeropage z = { .range = { .start = dst, .len = len },
	                             .mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE };
	int r = xioctl(fd, UFFDIO_ZEROPAGE, &z);
	*got = z.zeropage;
	return r;
}

static int uffd_zeropage_(int fd, uintptr_t dst, size_t len, size_t *done)
{
	UFFD_LOOP(zp1(fd, dst + off, chunk, &got), zeropage);
}

int uffd_zeropage(int fd, uintptr_t dst, size_t len, size_t *done)
{
	size_t d = 0;
	int r = uffd_zeropage_(fd, dst, len, &d);
	TRACE(TR_ZERO, dst, 0, len, ((uint64_t)d << 16) | (uint16_t)-r);
	if (done)
		*done = d;
	return r;
}

static int cp1(int fd, uintptr_t dst, const void *src, size_t len, bool wp, long long *got)
{
	struct uffdio_copy c = {
		.dst = dst, .src = (uintptr_t)src, .len = len,
		.mode = UFFDIO_COPY_MODE_DONTWAKE | (wp ? UFFDIO_COPY_MODE_WP : 0),
	};
	int r = xioctl(fd, UFFDIO_COPY, &c);
	*got = c.copy;
	return r;
}

static int uffd_copy_(int fd, uintptr_t dst, const void *src, size_t len, bool wp, size_t *done)
{
	UFFD_LOOP(cp1(fd, dst + off, (const char *)src + off, chunk, wp, &got), copy);
}

int uffd_copy(int fd, uintptr_t dst, const void *src, size_t len, bool wp, size_t *done)
{
	size_t d = 0;
	int r = uffd_copy_(fd, dst, src, len, wp, &d);
	TRACE(TR_COPY, dst, src, len, ((uint64_t)d << 16) | (uint16_t)-r);
	if (done)
		*done = d;
	return r;
}

static int mv1(int fd, uintptr_t dst, uintptr_t src, size_t len, long long *got)
{
	struct uffdio_move m = { .dst = dst, .src = src, .len = len,
	                         .mode = 1 /* UFFDIO_MOVE_MODE_DONTWAKE */ };
	int r = xioctl(fd, UFFDIO_MOVE, &m);
	*got = m.move;
	return r;
}

/* EBUSY (a page shared with a child after fork, or transiently pinned) is
 * retried twice, then reported for that page. */
static int uffd_move_(int fd, uintptr_t dst, uintptr_t src, size_t len, size_t *done)
{
	UFFD_LOOP(mv1(fd, dst + off, src + off, chunk, &got), move);
}

int uffd_move(int fd, uintptr_t dst, uintptr_t src, size_t len, size_t *done)
{
	size_t d = 0;
	int r = uffd_move_(fd, dst, src, len, &d);
	TRACE(TR_MOVE, dst, src, len, ((uint64_t)d << 16) | (uint16_t)-r);
	if (done)
		*done = d;
	return r;
}

int uffd_wp(int fd, uintptr_t start, size_t len, bool protect)
{
	struct uffdio_writeprotect w = {
		.range = { .start = start, .len = len },
		.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	int r;
	do
		r = xioctl(fd, UFFDIO_WRITEPROTECT, &w);
	while (r == -EAGAIN && !tls_no_wait);
	TRACE(TR_WP, start, protect, len, (uint16_t)-r);
	return r;
}

/* Is an event of this userfaultfd made but not read yet?  The kernel fails
 * userfaultfd calls with EAGAIN from the moment an mremap or munmap made
 * its change until its thread resumes after the event is read (so just
 * after a read the answer may still be yes); write-protect calls check that
 * before they look at the range, so a page that is mapped but never
 * registered answers without side effect (ENOENT). */
bool uffd_events_pending(int fd, uintptr_t probe)
{
	struct uffdio_writeprotect w = { .range = { .start = probe, .len = PAGE_SIZE }, .mode = 0 };
	return probe && xioctl(fd, UFFDIO_WRITEPROTECT, &w) == -EAGAIN;
}

int uffd_wake(int fd, uintptr_t start, size_t len)
{
	struct uffdio_range range = { .start = start, .len = len };
	return xioctl(fd, UFFDIO_WAKE, &range);
}

int uffd_poison(int fd, uintptr_t start, size_t len)
{
	struct uffdio_poison p = { .range = { .start = start, .len = len } };
	int r;
	do
		r = xioctl(fd, UFFDIO_POISON, &p);
	while (r == -EAGAIN && !tls_no_wait);
	return r;
}

void wake_range(struct uhmm *h, uintptr_t start, size_t len)
{
	/* In SIGBUS mode nobody sleeps in the kernel on a managed page. */
	if (h->mode == UHMM_FAULT_THREAD && len)
		uffd_wake(h->uffd, start, len);
}
