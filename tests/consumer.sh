#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A program outside the tree builds against the installed library the way
# a user's would (pkg-config), shared and static, and runs.
#   consumer.sh BUILD_DIR SOURCE_DIR
set -eu
build=$1
src=$2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/uhmm-consumer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet
pc=$(dirname "$(find "$tmp/root" -name uhmm.pc | head -n 1)")
export PKG_CONFIG_PATH=$pc PKG_CONFIG_SYSROOT_DIR=$tmp/root
libdir=$(dirname "$pc")
cc=${CC:-cc}
cp "$src/examples/basic.c" "$tmp/app.c"
cd "$tmp"
# shellcheck disable=SC2046
$cc -O2 -Wall -Wextra -Werror -o app-shared app.c $(pkg-config --cflags --libs uhmm)
LD_LIBRARY_PATH=$libdir ./app-shared > out-shared
if LD_LIBRARY_PATH=$libdir ldd ./app-shared | grep -q "libuhmm.so.0 => $libdir"; then
	echo "shared: linked against the installed libuhmm.so.0"
else
	echo "shared: not linked against the installed library"; LD_LIBRARY_PATH=$libdir ldd ./app-shared; exit 1
fi
# shellcheck disable=SC2046
$cc -O2 -Wall -Wextra -Werror -static-libgcc -o app-static app.c \
	$(pkg-config --cflags uhmm) "$libdir/libuhmm.a" $(pkg-config --libs-only-l --static uhmm | sed 's/-luhmm//') -ldl
./app-static > out-static
if ldd ./app-static | grep -q libuhmm; then
	echo "static: still linked against libuhmm.so"; exit 1
fi
for o in out-shared out-static; do
	grep -q "page 0: in system memory" "$o" || { echo "$o:"; cat "$o"; exit 1; }
done
echo "consumer: the example built with pkg-config runs, shared and static"
