/* SPDX-License-Identifier: MIT */
/* Where each page lives: a lock-free read of the page state table. */
#include "internal.h"

UHMM_API int uhmm_query(struct uhmm *h, const void *addr, size_t npages, struct uhmm_page_info *out)
{
	uintptr_t a = (uintptr_t)addr;
	if (!h || !out || !addr || !npages || !aligned(a) || npages > (UINTPTR_MAX - a) / PAGE_SIZE)
		return -EINVAL;
	service_quiesce(h);
	if (!range_covered(h, a, a + npages * PAGE_SIZE, true) &&
	    !range_covered_any(h, a, a + npages * PAGE_SIZE))
		range_grow_span(h, a, a + npages * PAGE_SIZE); /* grown in place by mremap? */
	if (!range_covered(h, a, a + npages * PAGE_SIZE, true) &&
	    !range_covered_any(h, a, a + npages * PAGE_SIZE))
		return -ENOENT;
	for (size_t i = 0; i < npages; i++) {
		struct range_ent r;
		/* The entry is read and its device page's block looked at in one
		 * EBR section: a block is freed only once the readers that could
		 * have found it through an entry have left (devmem.c,
		 * "Lifetimes" (c)). */
		unsigned tok = ebr_enter();
		bool persist = range_lookup(a + i * PAGE_SIZE, &r) && r.persist;
		if (persist) {
			/* Persistent memory: the CPU uses device memory in place. */
			out[i].state = UHMM_STATE_DEVICE_COHERENT;
			out[i].device = r.mem->dev;
			ebr_exit(tok);
			continue;
		}
		_Atomic uint64_t *e = ptable_entry(&h->pt, a + i * PAGE_SIZE, false);
		uint64_t v = e ? atomic_load(e) : 0;
		/* An mremap destination held for a move still on its way: the
		 * page is what its source entry says, not what was here. */
		uint64_t in;
		if ((v & PTE_BUSY) && remap_incoming(h, e, &in))
			v = in;
		out[i].state = (enum uhmm_state)pte_state(v);
		out[i].device = NULL;
		if (out[i].state == UHMM_STATE_DEVICE || out[i].state == UHMM_STATE_DEVICE_COHERENT) {
			struct uhmm_devmem *m = devmem_of(pte_dpage(v));
			out[i].device = m ? m->dev : NULL;
		}
		ebr_exit(tok);
	}
	return 0;
}
