/* SPDX-License-Identifier: MIT */
/*
 * Device backends: registration, destruction (evacuate first, never lose
 * data), and loss (a device that vanished poisons the pages it held).
 */
#include "internal.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

UHMM_API int uhmm_device_create(struct uhmm *h, const char *name, const struct uhmm_device_ops *ops,
                                unsigned flags, void *priv, struct uhmm_device **out)
{
	if (!h || !ops || !out || (flags & ~UHMM_DEVICE_HOST_BACKED))
		return -EINVAL;
	if (!(flags & UHMM_DEVICE_HOST_BACKED) && (!ops->copy_to_device || !ops->copy_from_device))
		return -EINVAL;
	if (!ops->dma_buf_get != !ops->dma_buf_put)
		return -EINVAL;
	struct uhmm_device *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	/* A copy device migrates through the move-staging area where the
	 * kernel has UFFDIO_MOVE; without one (no memory for it), through
	 * the copy fallback. */
	if (!(flags & UHMM_DEVICE_HOST_BACKED))
		(void)stage_init(h);
	d->h = h;
	snprintf(d->name, sizeof(d->name), "%s", name ? name : "device");
	d->ops = *ops;
	d->flags = flags;
	d->priv = priv;
	pthread_mutex_init(&d->lock, NULL);
	pthread_mutex_init(&d->evac_lock, NULL);
	pthread_mutex_lock(&h->dev_lock);
	int slot = -1;
	for (int i = 0; i < MAX_DEVICES; i++) {
		if (!atomic_load(&h->devices[i])) {
			slot = i;
			break;
		}
	}
	if (slot < 0) {
		pthread_mutex_unlock(&h->dev_lock);
		pthread_mutex_destroy(&d->lock);
		pthread_mutex_destroy(&d->evac_lock);
		free(d);
		return -ENOSPC;
	}
	d->slot = slot;
	atomic_store(&h->devices[slot], d);
	pthread_mutex_unlock(&h->dev_lock);
	*out = d;
	return 0;
}

/* Evacuate every block; -EBUSY (and nothing removed) if a page must stay. */
static int device_evacuate(struct uhmm_device *d)
{
	pthread_mutex_lock(&d->evac_lock); /* no block is freed under us */
	/* Under d->lock, which allocators hold until their pages are counted
	 * (devmem.c, "Lifetimes"): no block grows, none is taken from. */
	pthread_mutex_lock(&d->lock);
	d->dying = true;
	struct uhmm_devmem *list = d->mems;
	for (struct uhmm_devmem *m = list; m; m = m->next)
		atomic_store(&m->dead, true);
	pthread_mutex_unlock(&d->lock);
	int r = 0;
	for (struct uhmm_devmem *m = list; m && !r; m = m->next)
		r = devmem_evacuate(m);
	if (r) {
		pthread_mutex_lock(&d->lock);
		d->dying = false;
		for (struct uhmm_devmem *m = list; m; m = m->next)
			atomic_store(&m->dead, false);
		pthread_mutex_unlock(&d->lock);
	}
	pthread_mutex_unlock(&d->evac_lock);
	return r;
}

UHMM_API int uhmm_device_destroy(struct uhmm_device *d)
{
	if (!d)
		return -EINVAL;
	struct uhmm *h = d->h;
	service_quiesce(h);
	/* A lost device holds only poisoned pages, already released. */
	int r = device_evacuate(d);
	if (r)
		return r;
	struct uhmm_mirror *mi = atomic_load(&d->mirror);
	if (mi)
		uhmm_mirror_unregister(mi);
	pthread_mutex_lock(&h->dev_lock);
	atomic_store(&h->devices[d->slot], NULL);
	pthread_mutex_unlock(&h->dev_lock);
	ebr_synchronize(); /* invalidations that found d are over */
	if (d->ops.destroy)
		d->ops.destroy(d);
	if (d->backend_destroy)
		d->backend_destroy(d);
	pthread_mutex_lock(&d->lock);
	struct uhmm_devmem *m = d->mems;
	d->mems = NULL;
	pthread_mutex_unlock(&d->lock);
	while (m) {
		struct uhmm_devmem *next = m->next;
		devmem_destroy(m);
		m = next;
	}
	pthread_mutex_destroy(&d->lock);
	pthread_mutex_destroy(&d->evac_lock);
	free(d);
	return 0;
}

/* The device is gone: every page it held is poisoned (the data is lost;
 * a CPU access raises SIGBUS, never reads zeros). */
int device_lose(struct uhmm_device *d)
{
	struct uhmm *h = d->h;
	pthread_mutex_lock(&d->lock);
	struct uhmm_devmem *list = d->mems;
	for (struct uhmm_devmem *m = list; m; m = m->next)
		atomic_store(&m->dead, true); /* ordered with allocators (devmem.c) */
	pthread_mutex_unlock(&d->lock);
	for (struct uhmm_devmem *m = list; m; m = m->next) {
		/* In-place (coherent, persistent) accesses now raise SIGBUS:
		 * the file has no pages any more. */
		if (m->fd >= 0 && ftruncate(m->fd, 0))
			(void)0;
		for (size_t i = 0; i < m->npages && atomic_load(&m->used); i++) {
			struct uhmm_dpage *dp = &m->pages[i];
			if (dpage_ref(dp) == 0)
				continue;
			uintptr_t va = dpage_vaddr(dp);
			_Atomic uint64_t *e = ptable_entry(&h->pt, va, false);
			if (!e)
				continue;
			uint64_t v = pte_lock(e);
			if ((pte_state(v) != UHMM_STATE_DEVICE &&
			     pte_state(v) != UHMM_STATE_DEVICE_COHERENT) || pte_dpage(v) != dp) {
				page_unlock(h, e, v);
				continue;
			}
			mirror_invalidate(h, va, va + PAGE_SIZE, UHMM_EVENT_MIGRATE, NULL);
			dpage_put(dp);
			stat_add(h, ST_POISONED, 1);
			/* A poison marker makes every access fail in the kernel
			 * (hardware-poison SIGBUS), without a round trip, and a
			 * forked child inherits it: it never reads zeros there. */
			if (h->have_poison)
				uffd_poison(h->uffd, va, PAGE_SIZE);
			page_unlock(h, e, UHMM_STATE_POISONED);
			wake_range(h, va, PAGE_SIZE);
		}
	}
	return 0;
}

UHMM_API void *uhmm_device_priv(const struct uhmm_device *d) { return d ? d->priv : NULL; }
UHMM_API const char *uhmm_device_name(const struct uhmm_device *d) { return d ? d->name : NULL; }
UHMM_API struct uhmm *uhmm_device_context(const struct uhmm_device *d) { return d ? d->h : NULL; }
