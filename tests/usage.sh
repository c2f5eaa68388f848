#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The CLI's help, docs/USAGE.md and uhmm(1) say the same thing: every
# command, long option, environment variable and bench case of `uhmm --help`
# and `uhmm COMMAND --help` appears in both documents, and every option and
# variable the documents name appears in the help.  usage.sh UHMM USAGE.md uhmm.1
set -eu
uhmm=$1
usage=$2
page=$3
help=$("$uhmm" --help)
cmds=$(sed -n '/^commands:/,/^$/s/^  \([a-z]*\) .*/\1/p' <<<"$help")
for c in $cmds; do
	help+=$'\n'$("$uhmm" "$c" --help)
done
cases=$("$uhmm" bench --list | sed -n 's/^  \([a-z0-9-]*\) .*/\1/p')
# Roff escapes hyphens: read the page as text.
man_text=$(sed 's/\\-/-/g' "$page")
tokens() { grep -oE -- '--[a-z][a-z-]*|\bUHMM_[A-Z_]+\b' | sort -u; }
rc=0
for doc in "$usage" "$page"; do
	text=$([ "$doc" = "$page" ] && echo "$man_text" || cat "$doc")
	for t in $(tokens <<<"$help") $cases; do
		grep -qF -- "$t" <<<"$text" || { echo "$doc: lacks '$t' (in the help)"; rc=1; }
	done
	for c in $cmds; do
		grep -qE -- "uhmm $c\b" <<<"$text" || { echo "$doc: lacks command '$c'"; rc=1; }
	done
	for t in $(tokens <<<"$text"); do
		grep -qF -- "$t" <<<"$help" || { echo "$doc: names '$t', which the help does not"; rc=1; }
	done
done
echo "usage: $(wc -w <<<"$cmds") commands, $(tokens <<<"$help" | wc -l) options and variables, $(wc -w <<<"$cases") cases checked"
exit $rc
