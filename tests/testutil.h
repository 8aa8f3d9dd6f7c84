/* testutil.h — helpers shared by the test suites. */
#ifndef DL_TESTUTIL_H
#define DL_TESTUTIL_H

#include <stddef.h>

#include <check.h>

/* Path of a file in the shared folder ($DL_SHARED, default ../shared): "models/x.gguf". */
const char *dl_test_shared(const char *rel);
/* Read a whole file; NULL on error. *len gets the size. Caller frees. */
char *dl_test_read_file(const char *path, size_t *len);
/* Run one suite with Check's normal runner; returns the process exit code. */
int dl_test_run(Suite *s);

/* For suites that start the built binaries and talk to them over loopback. */
const char *dl_test_build_dir(void);  /* $DL_BUILD, default "build" */
double dl_test_now(void);             /* monotonic seconds */
void dl_test_nap(void);               /* 20 ms: the poll step of bounded waits */
int dl_test_free_port(void);          /* a port on 127.0.0.1 that was free a moment ago */

/* An HTTP response collected by libcurl through the two callbacks below. */
typedef struct dl_test_resp {
    long status;
    char *body;      /* NUL-terminated, malloc'd */
    size_t len;
    char hdr[4096];  /* the response headers, truncated to fit */
    size_t hlen;
} dl_test_resp;

size_t dl_test_on_body(char *p, size_t sz, size_t n, void *resp); /* CURLOPT_WRITEFUNCTION */
size_t dl_test_on_hdr(char *p, size_t sz, size_t n, void *resp);  /* CURLOPT_HEADERFUNCTION */

#endif
