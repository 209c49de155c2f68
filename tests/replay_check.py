#!/usr/bin/env python3
"""Independent check of `eplb replay` (issue 4, must show 2), stdlib only.

Runs `eplb replay --json --placement-log` on a trace CSV, then, from the log
and the trace alone, checks that every logged placement is valid and
recomputes the realized imbalance (default dispatch: whole tokens, round robin
over replicas in physical-id order; max / mean rank load per (step, layer)),
which must match the reported figures within 1%.

With --expect-median M, --expect-p90 P and --expect-moved F (fraction of the
slots per rebalance), it also checks the figures against those targets.

Usage: replay_check.py EPLB TRACE_CSV WORK_DIR [--expect-... X] [extra replay args...]
Prints the figures and 'N passed, M failed'."""
import csv
import json
import math
import os
import subprocess
import sys

EPLB, TRACE, WORK = sys.argv[1:4]
EXTRA = []
TARGETS = {}  # median / p90 / moved: the most each figure may be.
_args = sys.argv[4:]
while _args:
    if _args[0] in ("--expect-median", "--expect-p90", "--expect-moved") and len(_args) > 1:
        TARGETS[_args[0][len("--expect-"):]] = float(_args[1])
        _args = _args[2:]
    else:
        EXTRA.append(_args.pop(0))


def percentile(values, p):
    v = sorted(values)
    i = max(1, min(len(v), math.ceil(p * len(v))))
    return v[i - 1]


def main():
    os.makedirs(WORK, exist_ok=True)
    log_path = os.path.join(WORK, "placements.jsonl")
    out = subprocess.run([EPLB, "replay", "--trace", TRACE, "--placement-log", log_path,
                          "--json"] + EXTRA, check=True, capture_output=True, text=True)
    report = json.loads(out.stdout)
    ranks, slots, batch = report["ranks"], report["slots_per_rank"], report["batch_steps"]
    layers, experts = report["layers"], report["experts"]

    # Trace: steps[s][layer][expert] = count, grouped into replay steps.
    steps = {}
    with open(TRACE) as f:
        for row in csv.DictReader(f):
            s = int(row["step"]) // batch
            l, e = int(row["layer"]), int(row["expert"])
            steps.setdefault(s, {}).setdefault(l, {})
            steps[s][l][e] = steps[s][l].get(e, 0) + int(row["count"])

    # Log: per layer, (from_step, placement) in order.
    history = {l: [] for l in range(layers)}
    failures = 0
    with open(log_path) as f:
        for line in f:
            entry = json.loads(line)
            p = entry["placement"]
            ok = len(p) == ranks and all(len(r) == slots and len(set(r)) == slots
                                         for r in p)
            placed = {e for r in p for e in r}
            ok = ok and placed == set(range(experts))
            if not ok:
                failures += 1
                print(f"FAIL invalid placement at step {entry['step']} layer {entry['layer']}")
            history[entry["layer"]].append((entry["step"], p))

    def placement_at(layer, step):
        current = None
        for start, p in history[layer]:
            if start <= step:
                current = p
        return current

    values = []
    for s in range(report["steps"]):
        for l in range(layers):
            counts = steps.get(s, {}).get(l, {})
            if not counts:
                continue
            p = placement_at(l, s)
            replicas = {}
            for r in range(ranks):
                for k in range(slots):
                    replicas.setdefault(p[r][k], []).append(r * slots + k)
            load = [0] * ranks
            for e, n in counts.items():
                reps = sorted(replicas[e])
                c = len(reps)
                for j, phy in enumerate(reps):
                    load[phy // slots] += n // c + (1 if j < n % c else 0)
            total = sum(load)
            if total > 0:
                values.append(max(load) / (total / ranks))
    mine = {"median": percentile(values, 0.5), "p90": percentile(values, 0.9),
            "mean": sum(values) / len(values)}
    for key, value in mine.items():
        reported = report["imbalance"][key]
        ok = abs(value - reported) <= 0.01 * reported
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} imbalance {key}: recomputed {value:.4f}, "
              f"reported {reported:.4f}")
    print(f"policy {report['policy']}: median {mine['median']:.3f} p90 {mine['p90']:.3f} "
          f"(no balancing {report['baseline_imbalance']['median']:.3f} / "
          f"{report['baseline_imbalance']['p90']:.3f}), rebalances {report['rebalances']}, "
          f"moved per rebalance {100 * report['moved_per_rebalance']:.1f}% of slots, "
          f"max stall {report['max_stall_ms']} ms")
    checks = 4
    got = {"median": mine["median"], "p90": mine["p90"],
           "moved": report["moved_per_rebalance"]}
    for key, most in TARGETS.items():
        checks += 1
        ok = got[key] <= most
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} target {key}: {got[key]:.4f} <= {most}")
    print(f"{checks - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
