#!/bin/sh
# Runs every test suite binary given as arguments; prints one summary line at the end.
# Each suite is a Check runner; a suite that exits non-zero counts as failed.
passed=0; failed=0; failed_names=""
for t in "$@"; do
    name=$(basename "$t")
    echo "== $name"
    if "$t"; then passed=$((passed + 1)); else failed=$((failed + 1)); failed_names="$failed_names $name"; fi
done
echo
[ -n "$failed_names" ] && echo "failed suites:$failed_names"
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
