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
[ -z "$pkgs" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "uhmm: installing build dependencies:$pkgs"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $pkgs
else
	echo "uhmm: missing build dependencies:$pkgs" >&2
	echo "uhmm: install them with: sudo apt-get install$pkgs" >&2
	exit 1
fi
