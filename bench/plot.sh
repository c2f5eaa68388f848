#!/bin/sh
# Plot throughput against granule size from `uhmm bench granule --json FILE`
# (or a full run, which includes the granule sweep).
#
#   bench/plot.sh results.json [out.png]      (default: docs/granule.png)
#
# Needs jq and gnuplot (Debian: apt-get install -y jq gnuplot-nox).
set -eu
in=${1:?usage: bench/plot.sh results.json [out.png]}
out=${2:-docs/granule.png}
for t in jq gnuplot; do
	command -v "$t" >/dev/null 2>&1 || { echo "plot.sh: $t is not installed" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One data file per sweep series: granule (KiB), median GB/s, min, max.
series=$(jq -r '[.results[] | select(.granule_bytes) | .sweep] | unique | .[]' "$in")
[ -n "$series" ] || { echo "plot.sh: $in has no granule sweep (run 'uhmm bench granule --json FILE')" >&2; exit 1; }
for s in $series; do
	jq -r --arg s "$s" '.results[] | select(.sweep == $s) |
		"\(.granule_bytes / 1024) \(.value.median) \(.value.min) \(.value.max)"' "$in" \
		| sort -n > "$tmp/$s.dat"
done
memcpy=$(jq -r '[.results[] | select(.granule_bytes and .baseline_name == "memcpy") | .baseline.median]
	| sort | .[(length / 2 | floor)]' "$in")
title=$(jq -r '"uhmm granule sweep — \(.machine.cpu), \(.machine.vcpus) vCPUs, Linux \(.machine.kernel); \([.size, 134217728] | min / 1048576 | floor) MiB per point, median of \(.reps)"' "$in")
sweep_mib=$(jq -r '[.results[] | select(.granule_bytes)] | length' "$in")

plots=""
for s in $series; do
	case $s in
	fault-fwd-sigbus) label="CPU fault, sequential, SIGBUS (granule grows from fault-around)" ;;
	fault-fwd-thread) label="CPU fault, sequential, thread (granule grows from fault-around)" ;;
	fault-rev-sigbus) label="CPU fault, fixed granule = fault-around, SIGBUS" ;;
	fault-rev-thread) label="CPU fault, fixed granule = fault-around, thread" ;;
	migrate) label="uhmm_migrate sys -> device, per call" ;;
	migrate-back) label="uhmm_migrate device -> sys, per call" ;;
	*) label=$s ;;
	esac
	plots="$plots${plots:+, }'$tmp/$s.dat' using 1:2:3:4 with yerrorlines title '$label'"
done
plots="$plots, $memcpy with lines dashtype 2 lc rgb 'black' title sprintf('memcpy (median baseline, %.1f GB/s)', $memcpy)"

gnuplot <<GP
set terminal pngcairo size 1200,750 noenhanced font ',10'
set output '$out'
set title "$title"
set logscale x 2
set xlabel 'granule: fault-around pages x 4 KiB, or bytes per uhmm_migrate call (KiB)'
set ylabel 'throughput (GB/s)'
set xtics ('4' 4, '8' 8, '16' 16, '32' 32, '64' 64, '128' 128, '256' 256, '512' 512, '1M' 1024, '2M' 2048)
set logscale y 10
set yrange [0.05:*]
set grid
set key top left
plot $plots
GP
echo "plot.sh: wrote $out ($sweep_mib sweep rows)"
