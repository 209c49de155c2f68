#!/usr/bin/env python3
"""Ctrl-C during `eplb replay`: the run stops, exits 130, and every
line of the placement log and the recorded map are whole.
Usage: replay_interrupt_test.py EPLB TRACE WORK_DIR"""
import json
import os
import signal
import subprocess
import sys
import time

EPLB, TRACE, WORK = sys.argv[1:4]


def main():
    os.makedirs(WORK, exist_ok=True)
    log = os.path.join(WORK, "log.jsonl")
    rec = os.path.join(WORK, "rec.json")
    cfg = os.path.join(WORK, "cfg.json")
    with open(cfg, "w") as f:
        json.dump({"expert_map_record_path": rec, "num_redundant_experts": 8,
                   "expert_heat_collection_interval": 16,
                   "algorithm_execution_interval": 2}, f)
    env = dict(os.environ, EXPERT_MAP_RECORD="true")
    proc = subprocess.Popen([EPLB, "replay", "--trace", TRACE, "--ranks", "8", "--config",
                             cfg, "--placement-log", log, "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    failures = 0
    checks = [
        ("exit code 130", proc.returncode == 130),
        ("json says interrupted", json.loads(out)["interrupted"] is True),
        ("fewer steps than the trace", json.loads(out)["steps"] < 1000),
    ]
    lines = open(log).read().split("\n")
    checks.append(("log ends with a newline", lines[-1] == ""))
    try:
        for line in lines[:-1]:
            json.loads(line)
        checks.append(("every log line is whole JSON", True))
    except ValueError:
        checks.append(("every log line is whole JSON", False))
    if os.path.exists(rec):
        try:
            json.load(open(rec))
            checks.append(("recorded map is whole JSON", True))
        except ValueError:
            checks.append(("recorded map is whole JSON", False))
    checks.append(("no temp files left", not [f for f in os.listdir(WORK) if ".tmp" in f]))
    for name, ok in checks:
        failures += not ok
        print(("ok   " if ok else "FAIL ") + name)
    if failures:
        print(err)
    print(f"{len(checks) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
