#!/usr/bin/env python3
"""End to end: a generated trace through `eplb replay` (stdlib only).

Generates a small `domains` trace with eplb_gen_trace (twice, to check the
bytes are the same), replays it with `eplb replay --no-pace --json` under a
couple of policies, and checks that every command exits 0, that the JSON
parses and that it describes the generated trace.

Usage: gen_trace_replay_test.py EPLB_GEN_TRACE EPLB WORK_DIR
Prints one line per check and 'N passed, M failed'; exits 1 on a failure."""
import json
import os
import subprocess
import sys

GEN, EPLB, WORK = sys.argv[1:4]
STEPS = 60
passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}")


def main():
    os.makedirs(WORK, exist_ok=True)
    paths = [os.path.join(WORK, f"domains_{i}.csv") for i in range(2)]
    for path in paths:
        out = subprocess.run([GEN, "--family", "domains", "--seed", "3", "--steps",
                              str(STEPS), "--layers", "6", "--out", path],
                             capture_output=True, text=True)
        check(out.returncode == 0, f"eplb_gen_trace exits 0 ({out.stderr.strip()})")
    with open(paths[0], "rb") as a, open(paths[1], "rb") as b:
        check(a.read() == b.read(), "the same seed and flags give the same bytes")
    bad = subprocess.run([GEN, "--family", "domains", "--top-k", "0", "--out",
                          os.path.join(WORK, "bad.csv")], capture_output=True, text=True)
    check(bad.returncode == 2 and "--top-k" in bad.stderr and
          len(bad.stderr.strip().splitlines()) == 1,
          f"a bad flag value: exit 2, one line naming the flag ({bad.stderr.strip()})")
    for policy in ("swift", "default"):
        out = subprocess.run([EPLB, "replay", "--trace", paths[0], "--no-pace", "--json",
                              "--ranks", "8", "--redundant", "8", "--policy", policy,
                              "--heat-interval", "16", "--algo-interval", "2"],
                             capture_output=True, text=True)
        check(out.returncode == 0, f"eplb replay --policy {policy} exits 0 "
                                   f"({out.stderr.strip()})")
        try:
            report = json.loads(out.stdout)
        except json.JSONDecodeError as e:
            check(False, f"--policy {policy}: the JSON parses ({e})")
            continue
        check(report.get("steps") == STEPS and report.get("layers") == 6 and
              report.get("experts") == 128 and report.get("policy") == policy,
              f"--policy {policy}: the report describes the trace "
              f"(steps {report.get('steps')}, layers {report.get('layers')}, "
              f"experts {report.get('experts')})")
        check(report.get("rebalances", 0) >= 1 and report["imbalance"]["median"] >= 1,
              f"--policy {policy}: rebalanced ({report.get('rebalances')}) and scored "
              f"(median {report['imbalance']['median']:.3f})")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
