/* SPDX-License-Identifier: MIT */
/* The core uhmm flow: managed memory, migrate it to a device, fault it back. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <uhmm.h>

#define CHECK(call) do { int rc_ = (call); if (rc_ < 0) { \
	fprintf(stderr, "%s: %s\n", #call, strerror(-rc_)); return 1; } } while (0)

int main(void)
{
	struct uhmm *h;
	struct uhmm_device *dev;
	struct uhmm_page_info pi;
	struct uhmm_stats st;
	size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = 1024 * pg;
	char *p;

	CHECK(uhmm_open(NULL, &h));               /* fails? run `uhmm info` */
	CHECK(uhmm_dummy_create(h, NULL, &dev));  /* a simulated device */
	CHECK(uhmm_alloc(h, len, (void **)&p));   /* private anonymous, managed */
	memset(p, 'x', len);                      /* pages now in system memory */

	CHECK(uhmm_migrate(h, p, len, dev, NULL)); /* moved to device memory */
	CHECK(uhmm_query(h, p, 1, &pi));
	printf("page 0: %s\n", pi.state == UHMM_STATE_DEVICE ? "on the device" : "?");

	printf("CPU reads '%c'\n", p[0]);         /* faults page 0 back home */
	CHECK(uhmm_query(h, p, 1, &pi));
	printf("page 0: %s\n", pi.state == UHMM_STATE_SYSTEM ? "in system memory" : "?");

	CHECK(uhmm_stats_get(h, &st));
	printf("%llu pages to device, %llu back, %llu CPU faults\n",
	       (unsigned long long)st.pages_to_device,
	       (unsigned long long)st.pages_to_system, (unsigned long long)st.cpu_faults);
	CHECK(uhmm_free(h, p, len));
	CHECK(uhmm_close(h));                     /* every page comes home */
	return 0;
}
