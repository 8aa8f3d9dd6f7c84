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

#endif
