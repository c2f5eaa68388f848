#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `uhmm info --json` is one valid JSON object with the facts of `uhmm info`
# and the same exit status.  info-json.sh UHMM
set -u
uhmm=$1
command -v python3 >/dev/null 2>&1 || { echo "python3 not installed: skipped"; exit 77; }
out=$("$uhmm" info --json)
rc=$?
[ "$rc" -le 1 ] || { echo "uhmm info --json exited $rc"; exit 1; }
"$uhmm" info >/dev/null
[ $? = "$rc" ] || { echo "exit status differs from uhmm info"; exit 1; }
printf '%s\n' "$out" | python3 -m json.tool >/dev/null || { echo "not valid JSON:"; echo "$out"; exit 1; }
printf '%s\n' "$out" | RC=$rc python3 -c '
import json, os, sys
j = json.load(sys.stdin)
u = j["userfaultfd"]
assert j["version"].count(".") == 2, j["version"]
assert isinstance(j["page_size"], int) and j["page_size"] > 0
assert isinstance(j["kernel"], str) and j["kernel"]
assert isinstance(u["works"], bool) and u["works"] == (os.environ["RC"] == "0")
assert isinstance(u["reason"], str) and u["reason"], "empty reason"
assert j["features"]["mask"].startswith("0x")
for k in ("move", "sigbus", "poison", "wp", "events", "event_fork", "thread_id", "zeropage"):
    assert j["features"][k] in ((True, False) if u["works"] else (None,)), k
assert j["auto_mode"] in (("thread", "sigbus") if u["works"] else (None,))
assert j["privileges"]["seccomp"] in ("none", "strict", "filter", "unknown")
assert isinstance(j["cuda"]["available"], bool)
print("info --json: valid,", len(j), "keys, works =", u["works"])
' || exit 1
