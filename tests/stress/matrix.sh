#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The stress matrix: uhmm-stress with the full mix (munmap, mremap, madvise,
# realloc and fork racing migrations, device accesses and faults) over
# seeds x fault modes, one run at a time, and a table of the results.
#
#   matrix.sh BIN [--seeds "S1 S2 ..."] [--modes "thread sigbus nomove"]
#                 [--ops N] [--long-ops N] [--threads T] [--watchdog S]
#
# --long-ops adds one run per mode of that many operations, with the first
# seed + 1000000.  Modes: thread, sigbus (fault modes), nomove (thread mode
# with the copy fallback: no UFFDIO_MOVE), back-thread and back-sigbus
# (--mremap-back: every mremap moves its region away and straight back,
# the pattern that reads events out of order: RELIABILITY.md finding 26),
# copy, copy-sigbus (devices A and B are copy devices, not HOST_BACKED:
# migrations take pages through the move-staging area) and copy-nomove
# (copy devices through the copy fallback).  Exit status 1 if any run failed
# (non-zero exit, a mismatch, a hang caught by the watchdog, no summary);
# the failing runs' output is kept in $MATRIX_LOGS (default: a temporary
# folder, printed).
set -u
bin=${1:?usage: matrix.sh BIN [options]}
shift
seeds="1 2 3"
modes="thread sigbus nomove"
ops=20000
long_ops=0
threads=4
watchdog=120
while [ $# -gt 0 ]; do
	case "$1" in
	--seeds) seeds=$2; shift 2 ;;
	--modes) modes=$2; shift 2 ;;
	--ops) ops=$2; shift 2 ;;
	--long-ops) long_ops=$2; shift 2 ;;
	--threads) threads=$2; shift 2 ;;
	--watchdog) watchdog=$2; shift 2 ;;
	*) echo "matrix.sh: unknown option $1" >&2; exit 2 ;;
	esac
done
logs=${MATRIX_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/uhmm-matrix.XXXXXX")}
mkdir -p "$logs"

mode_args() {
	case "$1" in
	thread) echo "--mode thread" ;;
	sigbus) echo "--mode sigbus" ;;
	nomove) echo "--mode thread --no-move" ;;
	back-thread) echo "--mode thread --mremap-back" ;;
	back-sigbus) echo "--mode sigbus --mremap-back" ;;
	copy) echo "--mode thread --copy-device" ;;
	copy-sigbus) echo "--mode sigbus --copy-device" ;;
	copy-nomove) echo "--mode thread --copy-device --no-move" ;;
	*) echo "matrix.sh: unknown mode $1" >&2; exit 2 ;;
	esac
}

pass=0
fail=0
printf '%-8s %-11s %9s %13s %10s %8s  %s\n' seed mode ops "pages checked" mismatches time result
run() { # seed mode ops
	local seed=$1 mode=$2 n=$3 log="$logs/seed$1-$2-$3.log"
	local t0 t1 rc
	t0=$(date +%s.%N)
	# shellcheck disable=SC2046
	"$bin" --seed "$seed" --ops "$n" --threads "$threads" --watchdog "$watchdog" \
		$(mode_args "$mode") >"$log" 2>&1
	rc=$?
	t1=$(date +%s.%N)
	local sum pages mism result
	sum=$(grep -E "^uhmm-stress: seed $seed: .* pages checked, [0-9]+ mismatches" "$log" | tail -n 1)
	pages=$(sed -nE 's/.* ([0-9]+) pages checked.*/\1/p' <<<"$sum")
	mism=$(sed -nE 's/.* ([0-9]+) mismatches.*/\1/p' <<<"$sum")
	if [ "$rc" -eq 0 ] && [ -n "$sum" ] && [ "${mism:-1}" -eq 0 ]; then
		result=ok
		pass=$((pass + 1))
		rm -f "$log"
	else
		result="FAILED (exit $rc; log $log)"
		fail=$((fail + 1))
	fi
	printf '%-8s %-11s %9s %13s %10s %7.1fs  %s\n' "$seed" "$mode" "$n" "${pages:--}" \
		"${mism:--}" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$result"
}

for seed in $seeds; do
	for mode in $modes; do
		run "$seed" "$mode" "$ops"
	done
done
if [ "$long_ops" -gt 0 ]; then
	first=${seeds%% *}
	for mode in $modes; do
		run $((first + 1000000)) "$mode" "$long_ops"
	done
fi
[ "$fail" -eq 0 ] && rmdir "$logs" 2>/dev/null
echo "stress matrix: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
