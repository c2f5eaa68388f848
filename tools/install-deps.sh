#!/bin/sh
# Installs the Debian packages the build needs, only if something is missing.
# As root this runs apt-get; otherwise it says exactly what to install.
set -e
pkgs=""
command -v meson >/dev/null 2>&1 || pkgs="$pkgs meson"
command -v ninja >/dev/null 2>&1 || pkgs="$pkgs ninja-build"
command -v pkg-config >/dev/null 2>&1 || pkgs="$pkgs pkg-config"
command -v cc >/dev/null 2>&1 || pkgs="$pkgs gcc"
command -v clang >/dev/null 2>&1 || pkgs="$pkgs clang"
# Test dependency: the man-lint test (skipped without it).
command -v mandoc >/dev/null 2>&1 || pkgs="$pkgs mandoc"
if ! pkg-config --exists cmocka 2>/dev/null && [ ! -f /usr/include/cmocka.h ]; then
	pkgs="$pkgs libcmocka-dev"
fi
# Optional: USDT probes in the build (systemtap-sdt-dev: sys/sdt.h) and
# the usdt test's tracing run (bpftrace).  Installed where we can; the
# build and the tests work without them (the test skips).
opt=""
[ -f /usr/include/sys/sdt.h ] || [ -f "/usr/include/$(uname -m)-linux-gnu/sys/sdt.h" ] ||
	opt="$opt systemtap-sdt-dev"
command -v bpftrace >/dev/null 2>&1 || opt="$opt bpftrace"
[ -z "$pkgs$opt" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	export DEBIAN_FRONTEND=noninteractive
	if [ -n "$pkgs" ]; then
		echo "uhmm: installing build dependencies:$pkgs"
		apt-get update -qq
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $pkgs
	fi
	if [ -n "$opt" ]; then
		echo "uhmm: installing optional dependencies:$opt"
		[ -n "$pkgs" ] || apt-get update -qq || true
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $opt ||
			echo "uhmm: optional dependencies not installed (no USDT probes, usdt test skips)" >&2
	fi
	exit 0
fi
[ -n "$opt" ] && echo "uhmm: optional (USDT probes, their test): sudo apt-get install$opt" >&2
[ -z "$pkgs" ] && exit 0
echo "uhmm: missing build dependencies:$pkgs" >&2
echo "uhmm: install them with: sudo apt-get install$pkgs" >&2
exit 1
