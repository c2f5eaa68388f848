#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The shared library exports exactly the calls the public headers declare,
# each under a version node (src/uhmm.map).  abi.sh LIBUHMM.so INCLUDE_DIR
set -eu
lib=$1
inc=$2
exported=$(nm -D --defined-only "$lib" | awk '$2 == "T" { print $3 }' | sort -u)
declared=$(grep -hoE '\buhmm_[a-z0-9_]+[[:space:]]*\(' "$inc"/uhmm*.h | tr -d ' (' | sort -u)
unversioned=$(grep -v '@@UHMM_' <<<"$exported" || true)
names=$(sed 's/@.*//' <<<"$exported" | sort -u)
extra=$(comm -23 <(echo "$names") <(echo "$declared"))
missing=$(comm -13 <(echo "$names") <(echo "$declared"))
rc=0
[ -z "$unversioned" ] || { echo "exported without a version: $unversioned"; rc=1; }
[ -z "$extra" ] || { echo "exported but in no public header: $extra"; rc=1; }
[ -z "$missing" ] || { echo "declared in a public header but not exported: $missing"; rc=1; }
echo "abi: $(wc -l <<<"$names") symbols exported, all declared and versioned"
exit $rc
