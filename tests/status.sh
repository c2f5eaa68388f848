#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `uhmm stat` and `uhmm top` against a running process (status_hold: two
# dummy devices, 1023 of 1024 pages on the first, 1 back in system
# memory): the JSON snapshot is valid and says so, top draws the device
# and a bar inside a pty, the segment goes at close, UHMM_NO_STATUS=1
# publishes none.  Skipped (77) without python3 or /dev/shm.
#   status.sh UHMM STATUS_HOLD
set -eu
uhmm=$1
hold=$2
command -v python3 >/dev/null || { echo "no python3: skipped"; exit 77; }
[ -d /dev/shm ] && [ -w /dev/shm ] || { echo "no writable /dev/shm: skipped"; exit 77; }
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

start_hold() { # start_hold [ENV...]: sets pid once the process is ready
	rm -f "$tmp/fifo"; mkfifo "$tmp/fifo"
	env "$@" "$hold" >"$tmp/fifo" &
	pid=$!
	read -r word got <"$tmp/fifo" || fail "status_hold did not start"
	[ "$word" = ready ] && [ "$got" = "$pid" ] || fail "status_hold said '$word $got'"
}
stop_hold() {
	kill -TERM "$pid"
	wait "$pid" || fail "status_hold exited $?"
	pid=
}

start_hold
ls /dev/shm/uhmm."$pid".* >/dev/null 2>&1 || fail "no segment /dev/shm/uhmm.$pid.*"
"$uhmm" stat "$pid" --json >"$tmp/stat.json" || fail "uhmm stat --json failed"
python3 -m json.tool "$tmp/stat.json" >/dev/null || { cat "$tmp/stat.json"; fail "invalid JSON"; }
python3 - "$tmp/stat.json" "$pid" <<'PY' || { cat "$tmp/stat.json"; exit 1; }
import json, sys
d = json.load(open(sys.argv[1]))
pid = int(sys.argv[2])
def check(ok, what):
    if not ok:
        print("FAIL:", what); sys.exit(1)
c = d["contexts"]
check(len(c) == 1 and c[0]["pid"] == pid, "one context of pid %d" % pid)
c = c[0]
check(c["snapshot"] is True, "the process answered the snapshot request")
check(c["fault_mode"] in ("thread", "sigbus"), "a resolved fault mode")
check(len(c["devices"]) == 2, "two devices")
check(all(x["name"] == "dummy" for x in c["devices"]), "dummy devices")
check(c["devices"][0]["used_pages"] == 1023, "1023 pages on the first device")
check(c["devices"][0]["coherent_pages"] == 0, "private memory, not coherent")
check(c["devices"][1]["used_pages"] == 0, "none on the second")
check(c["devices"][0]["capacity_pages"] >= 1023, "capacity covers what is used")
check(c["ranges_total"] == 1 and len(c["ranges"]) == 1, "one range")
p = c["ranges"][0]["pages"]
check(p == {"none": 0, "system": 1, "device": 1023, "coherent": 0, "poisoned": 0},
      "pages per state %s" % p)
k = c["counters"]
check(k["pages_to_device"] == 1024, "1024 pages migrated")
check(k["pages_to_system"] == 1 and k["cpu_faults"] >= 1, "page 0 faulted home")
print("stat: ok")
PY
"$uhmm" stat "$pid" | grep -q "device dummy: .* used of .* (1023/" || { "$uhmm" stat "$pid"; fail "text stat"; }

# top in a pseudo-terminal (it reads keys from it), two refreshes.
python3 - "$uhmm" "$pid" "$tmp/top.out" <<'PY' || fail "uhmm top in a pty"
import os, pty, sys
uhmm, pid, out = sys.argv[1:4]
child, fd = pty.fork()
if child == 0:
    os.execv(uhmm, [uhmm, "top", pid, "--iterations", "2", "--interval", "0.2"])
buf = b""
while True:
    try:
        b = os.read(fd, 65536)
    except OSError:
        break
    if not b:
        break
    buf += b
_, st = os.waitpid(child, 0)
open(out, "wb").write(buf)
sys.exit(os.waitstatus_to_exitcode(st))
PY
top=$(sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$tmp/top.out")
grep -q $'\x1b\[2J' "$tmp/top.out" || fail "top does not clear the screen"
[ "$(grep -c "^uhmm top" <<<"$top")" = 2 ] || { echo "$top"; fail "top did not refresh twice"; }
grep -q "device dummy" <<<"$top" || { echo "$top"; fail "top lacks the device"; }
grep -qE '^  range .*\[s?D{30,}s?\.*\] s 1 D 1023 C 0 X 0' <<<"$top" || { echo "$top"; fail "top lacks the range bar"; }
grep -q "migrations/s" <<<"$top" || { echo "$top"; fail "top lacks the rates"; }
echo "top: ok"

# q quits (no --iterations): top reads keys from its terminal.
python3 - "$uhmm" "$pid" <<'PY' || fail "uhmm top did not quit on q"
import os, pty, select, signal, sys
uhmm, pid = sys.argv[1:3]
child, fd = pty.fork()
if child == 0:
    os.execv(uhmm, [uhmm, "top", pid, "--interval", "0.2"])
buf = b""
while b"uhmm top" not in buf:          # drawn once: the terminal is set up
    buf += os.read(fd, 65536)
os.write(fd, b"q")
signal.alarm(30)                       # a hang fails, it does not block the suite
try:
    while os.read(fd, 65536):
        pass
except OSError:
    pass
_, st = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(st))
PY
echo "top: q quits"

stop_hold
ls /dev/shm/uhmm."$pid".* >/dev/null 2>&1 && fail "segment left after uhmm_close"
echo "close: segment removed"

# Stale segment of a dead process: stat removes it.
start_hold
kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
dead=$pid; pid=
ls /dev/shm/uhmm."$dead".* >/dev/null 2>&1 || fail "no segment left by the killed process"
"$uhmm" stat "$dead" >/dev/null && fail "stat of a dead process succeeded"
ls /dev/shm/uhmm."$dead".* >/dev/null 2>&1 && fail "stale segment not removed"
echo "stale: removed"

# A segment named after a live process that does not map it (its pid was
# reused): removed too.
fake=/dev/shm/uhmm.$$.4242
: >"$fake"
"$uhmm" stat $$ >/dev/null && fail "stat of a process without a context succeeded"
[ -e "$fake" ] && { rm -f "$fake"; fail "segment of a reused pid not removed"; }
echo "reused pid: removed"

start_hold UHMM_NO_STATUS=1
ls /dev/shm/uhmm."$pid".* >/dev/null 2>&1 && fail "UHMM_NO_STATUS=1 published a segment"
stop_hold
echo "UHMM_NO_STATUS: none"
