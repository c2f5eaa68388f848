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
	struct uhmm_stats st = UHMM_STATS_INIT;
	size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = 1024 * pg;
	char *p;

	CHECK(uhmm_open(NULL, &h));               /* fails? run `uhmm info` */
	CHECK(uhmm_dummy_create(h, NULL, &dev));  /* a simulated device */
	CHECK(uhmm_alloc(h, len, (void **)&p));   /* private anonymous, managed */
	memset(p, 'x', len);                      /* pages now in system memory */

	CHECK(uhmm_migrate(h, p, len, dev, NULL)); /* moved to device memory */
	CHECK(uhmm_query(h, p, 1, &pi));
	if (pi.state != UHMM_STATE_DEVICE)
		return fprintf(stderr, "page 0 is not on the device\n"), 1;
	printf("page 0: on the device\n");

	char c = *(volatile char *)p;             /* CPU fault: page 0 comes home */
	printf("CPU reads '%c'\n", c);
	CHECK(uhmm_query(h, p, 1, &pi));
	if (pi.state != UHMM_STATE_SYSTEM || c != 'x')
		return fprintf(stderr, "page 0 did not come home intact\n"), 1;
	printf("page 0: in system memory\n");

	CHECK(uhmm_stats_get(h, &st));
	printf("%llu pages to device, %llu back, %llu CPU faults\n",
	       (unsigned long long)st.pages_to_device,
	       (unsigned long long)st.pages_to_system, (unsigned long long)st.cpu_faults);
	CHECK(uhmm_free(h, p, len));
	CHECK(uhmm_close(h));                     /* every page comes home */
	return 0;
}
