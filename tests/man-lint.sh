#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Every manual page lints clean (mandoc -Tlint -Wwarning), every .so alias
# names a page that exists, and every call the public headers declare has a
# page or an alias.  man-lint.sh MAN_DIR INCLUDE_DIR
set -eu
man=$1
inc=$2
command -v mandoc >/dev/null 2>&1 || { echo "mandoc not installed: skipped"; exit 77; }
rc=0
for f in "$man"/man*/*.[0-9]; do
	if head -n1 "$f" | grep -q '^\.so '; then
		# An alias: lint its target instead (mandoc flags .so itself as fragile).
		t=$(sed -n '1s/^\.so //p' "$f")
		[ "$(wc -l <"$f")" = 1 ] && [ -f "$man/$t" ] || { echo "$f: bad alias '.so $t'"; rc=1; }
		continue
	fi
	mandoc -Tlint -Wwarning "$f" || rc=1
done
declared=$(grep -hoE '\buhmm_[a-z0-9_]+[[:space:]]*\(' "$inc"/uhmm*.h | tr -d ' (' | sort -u)
for fn in $declared; do
	[ -f "$man/man3/$fn.3" ] || { echo "no manual page for $fn (man/man3/$fn.3)"; rc=1; }
done
echo "man-lint: $(ls "$man"/man*/*.[0-9] | wc -l) pages, $(wc -w <<<"$declared") calls covered"
exit $rc
