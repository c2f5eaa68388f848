#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The USDT probes (src/probes.h, docs/USAGE.md "Tracing").
#
#   usdt.sh notes HAVE_SDT SRC_DIR UHMM_BIN [LIBUHMM_SO]
#     every probe src/probes.h declares is in the ELF notes (readelf -n) of
#     the uhmm binary and of libuhmm.so, and in docs/USAGE.md.
#   usdt.sh trace HAVE_SDT SRC_DIR UHMM_BIN
#     tools/uhmm-trace.bt, run by bpftrace around `uhmm demo --size 64M` in
#     each fault mode, prints a non-empty CPU-fault histogram for that mode
#     and the demo's migration, with the page count the demo reports.
#
# Exit 77 (skipped) where the build has no sys/sdt.h, or bpftrace is not
# installed or cannot attach (not root, no uprobes, lockdown): it says why.
set -u
mode=$1
have_sdt=$2
src=$3
bin=$4
so=${5:-}
[ "$have_sdt" = true ] || { echo "built without sys/sdt.h (-Dusdt, systemtap-sdt-dev): skipped"; exit 77; }

probes=$(sed -n 's/^UHMM_PROBE_DECLARE(\([a-z_]*\));$/\1/p' "$src/src/probes.h")
[ -n "$probes" ] || { echo "no probe declared in src/probes.h"; exit 1; }

if [ "$mode" = notes ]; then
	command -v readelf >/dev/null 2>&1 || { echo "readelf not installed: skipped"; exit 77; }
	rc=0
	for obj in "$bin" $so; do
		# "Provider: uhmm" is followed by "Name: PROBE" in each stapsdt note.
		have=$(readelf -n "$obj" | awk '/Provider: uhmm$/ { getline; print $2 }' | sort -u)
		for p in $probes; do
			grep -qx "$p" <<<"$have" || { echo "$obj: no USDT probe uhmm:$p"; rc=1; }
		done
		for p in $have; do
			grep -qx "$p" <<<"$probes" || { echo "$obj: probe uhmm:$p not in src/probes.h"; rc=1; }
		done
		echo "$obj: $(wc -w <<<"$have") uhmm probes"
	done
	for p in $probes; do
		grep -q "^| \`$p\`" "$src/docs/USAGE.md" || { echo "docs/USAGE.md: probe $p not in Tracing"; rc=1; }
	done
	exit $rc
fi

[ "$mode" = trace ] || { echo "usage: usdt.sh notes|trace ..."; exit 2; }
command -v bpftrace >/dev/null 2>&1 || { echo "bpftrace not installed: skipped"; exit 77; }
# Probes missing from the binary are a failure, not a reason to skip.
readelf -n "$bin" | grep -q 'Provider: uhmm$' || { echo "$bin: no uhmm USDT probe"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rc=0
for fm in thread sigbus; do
	out=$tmp/$fm.out   # the script's output (-o)
	demo=$tmp/$fm.demo # the demo's, apart: its buffered lines never split the script's
	err=$tmp/$fm.err
	# -c: bpftrace starts the demo only once every probe is attached, so
	# nothing races the demo's start.  Bounded: the demo takes well under
	# a second; bpftrace's start (compiling the script) a few.
	timeout -k 10 180 bpftrace -o "$out" -c "$bin demo --size 64M --mode $fm" \
		"$src/tools/uhmm-trace.bt" "$bin" >"$demo" 2>"$err"
	brc=$?
	if ! grep -q '^uhmm-trace: tracing' "$out" 2>/dev/null; then
		# BEGIN never ran: bpftrace could not load or attach the script.
		[ "$brc" = 124 ] && { echo "bpftrace timed out before attaching"; tail -n 20 "$err"; exit 1; }
		echo "bpftrace cannot attach here (exit $brc): skipped"
		tail -n 20 "$err"
		exit 77
	fi
	fail() { echo "$fm: $*"; rc=1; }
	[ "$brc" = 0 ] || fail "bpftrace exited $brc"
	grep -q '^  OK: ' "$demo" || fail "the demo did not verify its data"
	# The demo's own count of pages it moved to the device, and the probe's.
	n=$(sed -n 's/^ *\([0-9][0-9]*\) pages migrated, \([0-9]*\) skipped$/\1 pages (\2 skipped)/p' "$demo" | head -n1)
	[ -n "$n" ] || fail "the demo printed no migration count"
	grep -q "^migrate_end dummy: $n in [0-9]* us, [0-9]* MB/s, result 0$" "$out" ||
		fail "no migrate_end line for the demo's $n"
	grep -Eq '^(last [0-9]+ ms|[0-9:]+) migrate: [1-9][0-9]* bytes/s \([1-9][0-9]* calls' "$out" ||
		fail "no migration throughput line"
	# The histogram of this mode: the lines after its map name up to a blank
	# line; its counts add up to at least one fault.
	faults=$(awk -v map="@cpu_fault_us_$fm:" '
		$1 == map { on = 1; next }
		on && NF == 0 { on = 0 }
		on && /^\[/ { sub(/^[^)]*\)/, ""); s += $1 }
		END { print s + 0 }' "$out")
	[ "$faults" -gt 0 ] || fail "empty CPU-fault histogram (@cpu_fault_us_$fm)"
	echo "$fm: $faults CPU faults in the histogram, migrate_end $n"
	if [ "$rc" != 0 ]; then
		cat "$demo" "$out"
		tail -n 20 "$err"
		exit 1
	fi
done
exit 0
