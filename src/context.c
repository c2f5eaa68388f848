/* SPDX-License-Identifier: MIT */
/*
 * Contexts: options (API and environment), opening the userfaultfd with the
 * features uhmm uses, the service thread, fork handling and teardown.
 */
#include "internal.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#define DEFAULT_FAULT_AROUND 16
#define DEFAULT_SPIN_US      50

static pthread_mutex_t g_ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uhmm *g_contexts;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

void contexts_lock(void) { pthread_mutex_lock(&g_ctx_lock); }
void contexts_unlock(void) { pthread_mutex_unlock(&g_ctx_lock); }

/* ---- fork: the child must see the parent's data ----
 * Without UFFD_FEATURE_EVENT_FORK the child's copy of a managed range is
 * plain memory, so a device-resident page would read as zeros there.
 * Before fork every page comes home, and no migration to a device runs
 * until fork returns (fork_lock held exclusively across it). */
static void atfork_prepare(void)
{
	contexts_lock();
	TRACE(TR_FORK, 0, 0, 0, 0);
	for (struct uhmm *h = g_contexts; h; h = h->next_ctx) {
		pthread_rwlock_wrlock(&h->fork_lock);
		struct range_ent *v;
		long n = range_list(h, &v);
		for (long i = 0; i < n; i++)
			migrate_range_home(h, v[i].start, v[i].end, NULL);
		if (n >= 0)
			free(v);
	}
}

static void atfork_parent(void)
{
	TRACE(TR_FORK, 1, 0, 0, 0);
	for (struct uhmm *h = g_contexts; h; h = h->next_ctx)
		pthread_rwlock_unlock(&h->fork_lock);
	contexts_unlock();
}

static void atfork_child(void)
{
	/* The child inherits none of the parent's live state: no service
	 * thread, no registration (no EVENT_FORK), no pools (DONTFORK).  Its
	 * copies of the parent's contexts are unusable (calls on them return
	 * -ECHILD); forget them so the child can open its own. */
	for (struct uhmm *h = g_contexts; h; h = h->next_ctx)
		pthread_rwlock_unlock(&h->fork_lock);
	g_contexts = NULL;
	registry_reset_child();
	ebr_reset_child();
	contexts_unlock();
}

static void register_atfork(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* ---- options ---- */

static unsigned env_uint(const char *name, unsigned dflt)
{
	const char *s = getenv(name);
	if (!s || !*s)
		return dflt;
	char *end;
	unsigned long v = strtoul(s, &end, 0);
	return *end ? dflt : (unsigned)v;
}

static int resolve_options(const struct uhmm_options *o, struct uhmm_options *out)
{
	memset(out, 0, sizeof(*out));
	if (o) {
		/* Fields past the caller's sz stay 0: their defaults. */
		long n = sized_check(o, UHMM_OPTIONS_V1, UHMM_OPTIONS_KNOWN);
		if (n < 0)
			return (int)n;
		memcpy(out, o, (size_t)n);
	}
	if (out->fault_mode > UHMM_FAULT_SIGBUS || (out->flags & ~(UHMM_OPT_NO_MOVE | UHMM_OPT_NO_STATUS)) || out->reserved)
		return -EINVAL;
	if (out->fault_mode == UHMM_FAULT_AUTO) {
		const char *m = getenv("UHMM_FAULT_MODE");
		if (m && !strcasecmp(m, "thread"))
			out->fault_mode = UHMM_FAULT_THREAD;
		else if (m && !strcasecmp(m, "sigbus"))
			out->fault_mode = UHMM_FAULT_SIGBUS;
	}
	if (!out->fault_around)
		out->fault_around = env_uint("UHMM_FAULT_AROUND", DEFAULT_FAULT_AROUND);
	if (!out->spin_us)
		out->spin_us = env_uint("UHMM_SPIN_US", DEFAULT_SPIN_US);
	if (!out->fault_ahead)
		out->fault_ahead = env_uint("UHMM_FAULT_AHEAD", 0);
	if (out->fault_ahead > AHEAD_MAX)
		out->fault_ahead = AHEAD_MAX;
	if (env_uint("UHMM_NO_MOVE", 0))
		out->flags |= UHMM_OPT_NO_MOVE;
	unsigned fa = out->fault_around ? out->fault_around : 1;
	if (fa > BATCH_PAGES)
		fa = BATCH_PAGES;
	while (fa & (fa - 1))
		fa &= fa - 1; /* round down to a power of two */
	out->fault_around = fa;
	return 0;
}

/* What the kernel offers, from a throw-away userfaultfd. */
static uint64_t probe_features(void)
{
	struct uffd_probe p;
	uffd_open_best(&p, O_CLOEXEC | O_NONBLOCK);
	if (p.fd < 0)
		return 0;
	uint64_t f = 0;
	uffd_api(p.fd, 0, &f);
	close(p.fd);
	return f;
}

UHMM_API int uhmm_open(const struct uhmm_options *opts, struct uhmm **out)
{
	if (!out)
		return -EINVAL;
	if (sysconf(_SC_PAGESIZE) != (long)PAGE_SIZE)
		return -EOPNOTSUPP;
	struct uhmm_options o;
	int r = resolve_options(opts, &o);
	if (r)
		return r;

	trace_init();
	delay_init();
	uint64_t avail = probe_features();
	struct uffd_probe p;
	uffd_open_best(&p, O_CLOEXEC | O_NONBLOCK);
	if (p.fd < 0)
		return -p.err;

	struct uhmm *h = calloc(1, sizeof(*h));
	if (!h) {
		close(p.fd);
		return -ENOMEM;
	}
	h->uffd = p.fd;
	h->kernel_faults = p.kernel_faults;
	h->mode = o.fault_mode;
	if (h->mode == UHMM_FAULT_AUTO)
		h->mode = h->kernel_faults || !(avail & UFFD_FEATURE_SIGBUS) ? UHMM_FAULT_THREAD
		                                                             : UHMM_FAULT_SIGBUS;
	if (h->mode == UHMM_FAULT_SIGBUS && !(avail & UFFD_FEATURE_SIGBUS)) {
		r = -EOPNOTSUPP;
		goto fail;
	}
	uint64_t want = UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |
	                UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_THREAD_ID |
	                UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
	                UFFD_FEATURE_MOVE | UFFD_FEATURE_POISON |
	                (h->mode == UHMM_FAULT_SIGBUS ? UFFD_FEATURE_SIGBUS : 0);
	r = uffd_api(h->uffd, want & avail, &h->features);
	if (r)
		goto fail;
	h->use_move = (h->features & UFFD_FEATURE_MOVE) && !(o.flags & UHMM_OPT_NO_MOVE);
	h->use_wp = h->features & UFFD_FEATURE_PAGEFAULT_FLAG_WP;
	h->have_poison = h->features & UFFD_FEATURE_POISON;
	h->fault_around = o.fault_around;
	h->spin_us = o.spin_us;
	h->pid = getpid();
	ptable_init(&h->pt);
	pthread_mutex_init(&h->dev_lock, NULL);
	pthread_rwlock_init(&h->fork_lock, NULL);
	pthread_mutex_init(&h->selfremove_lock, NULL);
	pthread_mutex_init(&h->selfremove_mu, NULL);
	pthread_mutex_init(&h->remap_lock, NULL);
	pthread_mutex_init(&h->owed_lock, NULL);
	if (h->use_wp) {
		void *pp = mmap(NULL, PAGE_SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		h->probe = pp == MAP_FAILED ? 0 : (uintptr_t)pp;
	}
	pthread_mutex_init(&h->grow_mu, NULL);
	pthread_mutex_init(&h->stage.init_lock, NULL);
	pthread_mutex_init(&h->stage.mu, NULL);
	pthread_cond_init(&h->stage.cv, NULL);
	status_open(h, &o); /* before any thread that counts */

	if (h->mode == UHMM_FAULT_SIGBUS && (r = sigbus_acquire()))
		goto fail_tables;
	if (h->mode == UHMM_FAULT_SIGBUS)
		sigbus_track_fd(h->uffd, true);
	r = service_start(h);
	if (!r && (r = ahead_start(h, o.fault_ahead)))
		service_stop(h);
	if (r) {
		if (h->mode == UHMM_FAULT_SIGBUS) {
			sigbus_track_fd(h->uffd, false);
			sigbus_release();
		}
		goto fail_tables;
	}
	pthread_once(&g_atfork_once, register_atfork);
	contexts_lock();
	h->next_ctx = g_contexts;
	g_contexts = h;
	contexts_unlock();
	*out = h;
	return 0;
fail_tables:
	status_close(h);
	if (h->probe)
		munmap((void *)h->probe, PAGE_SIZE);
	ptable_destroy(&h->pt);
fail:
	close(h->uffd);
	free(h);
	return r;
}

UHMM_API enum uhmm_fault_mode uhmm_fault_mode(const struct uhmm *h)
{
	return h ? h->mode : UHMM_FAULT_AUTO;
}

UHMM_API int uhmm_close(struct uhmm *h)
{
	if (!h)
		return -EINVAL;
	if (h->pid != getpid())
		return -ECHILD; /* a forked child's copy: nothing of it is live here */
	ahead_stop(h); /* no migration of ours may outlive what it uses */
	/* Devices first: their memory comes home. */
	for (int i = 0; i < MAX_DEVICES; i++) {
		struct uhmm_device *d = atomic_load(&h->devices[i]);
		if (d) {
			int r = uhmm_device_destroy(d);
			if (r)
				return r; /* a page could not come back: keep everything */
		}
	}
	int r = range_remove_locked_all(h);
	if (r)
		return r;
	ebr_synchronize();
	stage_stop(h); /* before the threads and tables it uses go */
	service_stop(h);
	if (h->mode == UHMM_FAULT_SIGBUS) {
		sigbus_track_fd(h->uffd, false);
		sigbus_release();
	}
	/* Once nothing counts any more (the counters live in the segment),
	 * and before the page table its thread walks goes. */
	status_close(h);
	contexts_lock();
	for (struct uhmm **pp = &g_contexts; *pp; pp = &(*pp)->next_ctx) {
		if (*pp == h) {
			*pp = h->next_ctx;
			break;
		}
	}
	contexts_unlock();
	stage_destroy(h);
	close(h->uffd);
	ptable_destroy(&h->pt);
	for (int i = 0; i < 8; i++)
		if (h->staging.buf[i])
			munmap(h->staging.buf[i], BATCH_PAGES * PAGE_SIZE);
	pthread_mutex_destroy(&h->dev_lock);
	pthread_rwlock_destroy(&h->fork_lock);
	pthread_mutex_destroy(&h->selfremove_lock);
	pthread_mutex_destroy(&h->selfremove_mu);
	pthread_mutex_destroy(&h->grow_mu);
	pthread_mutex_destroy(&h->stage.init_lock);
	pthread_mutex_destroy(&h->stage.mu);
	pthread_cond_destroy(&h->stage.cv);
	owed_destroy(h);
	if (h->probe)
		munmap((void *)h->probe, PAGE_SIZE);
	free(h);
	return 0;
}

/* ---- staging buffers ----
 * Eight lazily mapped 2 MiB buffers per context, claimed with a bit mask
 * (usable from the SIGBUS handler); past eight, a temporary mapping. */
char *staging_get(struct uhmm *h, int *slot)
{
	uint64_t busy = atomic_load(&h->staging.busy);
	for (int i = 0; i < 8; i++) {
		if (busy & (1ULL << i))
			continue;
		if (!(atomic_fetch_or(&h->staging.busy, 1ULL << i) & (1ULL << i))) {
			char *b = h->staging.buf[i];
			if (!b) {
				b = mmap(NULL, BATCH_PAGES * PAGE_SIZE, PROT_READ | PROT_WRITE,
				         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
				if (b == MAP_FAILED) {
					atomic_fetch_and(&h->staging.busy, ~(1ULL << i));
					return NULL;
				}
				madvise(b, BATCH_PAGES * PAGE_SIZE, MADV_DONTFORK);
				h->staging.buf[i] = b;
			}
			*slot = i;
			return b;
		}
		busy = atomic_load(&h->staging.busy);
	}
	char *b = mmap(NULL, BATCH_PAGES * PAGE_SIZE, PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	*slot = 8;
	return b == MAP_FAILED ? NULL : b;
}

void staging_put(struct uhmm *h, char *buf, int slot)
{
	if (slot >= 8) {
		munmap(buf, BATCH_PAGES * PAGE_SIZE);
		return;
	}
	atomic_fetch_and(&h->staging.busy, ~(1ULL << slot));
}
