#!/usr/bin/env python3
"""Independent check of `eplb replay`, stdlib only.

Runs `eplb replay --json --placement-log --rank-load-log` on a trace CSV, then,
from the two logs and the trace alone, checks:

  * every logged placement is valid (each rank holds distinct experts, every
    expert is placed, every layer is logged at step 0);
  * the rank-load log has one row per (step, layer, rank) of the replay, with
    non-negative whole tokens that sum, per (step, layer), to the trace's
    tokens of that step and layer;
  * the rank loads are a dispatch of the placement serving at that step:
      - rr dispatch: equal to the round-robin split recomputed from the
        placement (an expert's n tokens over its c replicas in ascending
        physical id, replica j gets n // c + (j < n % c));
      - balanced dispatch: feasible (a max flow from the experts to the ranks
        holding them, with each rank's logged tokens as its capacity, carries
        every token), no busier than round robin, and optimal (the busiest
        rank gets the least any dispatch of that placement can give it);
  * the reported imbalance figures (median, p90, mean; and the steady ones
    over steps >= steady_from) match, within 1%, those recomputed from the
    rank-load log alone and, under rr, from the placement log and the trace.

The dispatch is read from the report's `dispatch` field, so `--dispatch
balanced` may be among the replay arguments.

With --expect-median M, --expect-p90 P and --expect-moved F (fraction of the
slots per rebalance), it also checks the figures against those targets.

Usage:
  replay_check.py EPLB TRACE_CSV WORK_DIR [--expect-... X] [replay args...]
      runs the replay, writing report.json, placements.jsonl and
      rank_loads.csv into WORK_DIR, then checks them;
  replay_check.py --check-only WORK_DIR TRACE_CSV [--expect-... X]
      checks the files a previous run left in WORK_DIR, without replaying.
Prints what each check did and 'N passed, M failed'; exits 1 on any failure."""
import collections
import csv
import json
import math
import os
import re
import subprocess
import sys
import time

REPORT, PLACEMENTS, RANK_LOADS = "report.json", "placements.jsonl", "rank_loads.csv"
RANK_LOAD_HEADER = ["step", "layer", "rank", "tokens"]
EXAMPLES = 3  # Bad (step, layer) pairs quoted per failed check.


def parse_args(argv):
    """Returns (eplb or None, trace, work_dir, targets, extra replay args)."""
    if argv[:1] == ["--check-only"]:
        if len(argv) < 3:
            sys.exit(__doc__)
        eplb, work, trace, rest = None, argv[1], argv[2], argv[3:]
    else:
        if len(argv) < 3:
            sys.exit(__doc__)
        eplb, trace, work, rest = argv[0], argv[1], argv[2], argv[3:]
    targets, extra = {}, []  # targets: median / p90 / moved, the most each may be.
    while rest:
        if rest[0] in ("--expect-median", "--expect-p90", "--expect-moved") and len(rest) > 1:
            targets[rest[0][len("--expect-"):]] = float(rest[1])
            rest = rest[2:]
        else:
            extra.append(rest.pop(0))
    if eplb is None and extra:
        sys.exit(f"--check-only takes no replay arguments, got {extra}")
    return eplb, trace, work, targets, extra


class Tally:
    """Counts checks; each prints one line."""

    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok, what):
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok

    def check_pairs(self, bad, total, what):
        """One check over many (step, layer) pairs; bad lists (pair, reason)."""
        detail = f"{what}: {total - len(bad)} of {total} (step, layer) pairs ok"
        if bad:
            detail += "; e.g. " + "; ".join(f"step {s} layer {l}: {why}"
                                            for (s, l), why in bad[:EXAMPLES])
        return self.check(not bad, detail)


# --- Figures -----------------------------------------------------------------

def percentile(values, p):
    """Nearest-rank percentile, as the replay reports it."""
    v = sorted(values)
    i = max(1, min(len(v), math.ceil(p * len(v))))
    return v[i - 1]


def summarise(values):
    if not values:
        return None
    return {"median": percentile(values, 0.5), "p90": percentile(values, 0.9),
            "mean": sum(values) / len(values)}


def imbalance(load):
    """max / mean rank load; None when the layer had no tokens (not scored)."""
    total = sum(load)
    return max(load) / (total / len(load)) if total > 0 else None


def check_figures(tally, mine, reported, source):
    if mine is None:
        tally.check(False, f"imbalance from {source}: no scored (step, layer) pair")
        return
    for key, value in mine.items():
        tally.check(abs(value - reported[key]) <= 0.01 * abs(reported[key]),
                    f"{source} {key}: recomputed {value:.4f}, reported {reported[key]:.4f}")


# --- Dispatch ----------------------------------------------------------------

def round_robin(replicas, counts, ranks, slots):
    """Rank loads of the rr dispatch: replica j of c (ascending physical id)
    gets n // c + (j < n % c) of its expert's n tokens."""
    load = [0] * ranks
    for e, n in counts.items():
        reps = replicas[e]
        c = len(reps)
        for j, phy in enumerate(reps):
            load[phy // slots] += n // c + (1 if j < n % c else 0)
    return load


def max_flow(capacity, source, sink):
    """Edmonds-Karp: the most flow from source to sink. capacity[u][v] is the
    capacity of edge u -> v; it is used up in place (left as the residual)."""
    for u in list(capacity):
        for v in list(capacity[u]):
            capacity.setdefault(v, {}).setdefault(u, 0)  # Reverse edges.
    flow = 0
    while True:
        parent = {source: None}  # Shortest augmenting path by BFS.
        queue = collections.deque([source])
        while queue and sink not in parent:
            u = queue.popleft()
            for v, c in capacity[u].items():
                if c > 0 and v not in parent:
                    parent[v] = u
                    queue.append(v)
        if sink not in parent:
            return flow
        path, v = [], sink
        while parent[v] is not None:
            path.append((parent[v], v))
            v = parent[v]
        push = min(capacity[u][v] for u, v in path)
        for u, v in path:
            capacity[u][v] -= push
            capacity[v][u] += push
        flow += push


def can_dispatch(groups, cap):
    """Whether the tokens can be dispatched so that rank r gets exactly cap[r]
    at most, each expert's tokens only going to ranks that hold it.

    groups maps a set of holding ranks (a sorted tuple) to the tokens of the
    experts held by exactly those ranks: experts with the same holders are
    interchangeable, so they are one source node. A set of one rank must send
    all its tokens there; the rest is a max flow source -> holder set -> rank
    -> sink with the ranks' remaining capacities, which must carry every
    token."""
    left = list(cap)
    for holders, n in groups.items():
        if len(holders) == 1:
            left[holders[0]] -= n
    if min(left) < 0:
        return False
    shared = {h: n for h, n in groups.items() if len(h) > 1 and n > 0}
    need = sum(shared.values())
    if need == 0:
        return True
    if need > sum(left):
        return False
    graph = {"source": {("set", h): n for h, n in shared.items()}}
    for h, n in shared.items():
        graph[("set", h)] = {("rank", r): n for r in h}
    for r, c in enumerate(left):
        graph[("rank", r)] = {"sink": c}
    return max_flow(graph, "source", "sink") == need


def least_peak(groups, ranks, lo, hi):
    """The smallest T in [lo, hi] with every rank capped at T dispatchable
    (hi must be); binary search, feasibility being monotone in T."""
    while lo < hi:
        mid = (lo + hi) // 2
        if can_dispatch(groups, [mid] * ranks):
            hi = mid
        else:
            lo = mid + 1
    return lo


# --- Inputs ------------------------------------------------------------------

def run_replay(eplb, trace, work, extra):
    os.makedirs(work, exist_ok=True)
    for name in (PLACEMENTS, RANK_LOADS, REPORT):
        if os.path.exists(os.path.join(work, name)):
            os.remove(os.path.join(work, name))
    out = subprocess.run([eplb, "replay", "--trace", trace,
                          "--placement-log", os.path.join(work, PLACEMENTS),
                          "--rank-load-log", os.path.join(work, RANK_LOADS),
                          "--json"] + extra, check=True, capture_output=True, text=True)
    with open(os.path.join(work, REPORT), "w") as f:
        f.write(out.stdout)


def read_trace(path, batch):
    """tokens[(step, layer)][expert] = count, grouped into replay steps."""
    tokens = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            key = (int(row["step"]) // batch, int(row["layer"]))
            e = int(row["expert"])
            per_expert = tokens.setdefault(key, {})
            per_expert[e] = per_expert.get(e, 0) + int(row["count"])
    return tokens


def read_placements(tally, path, report):
    """Per layer, [(from_step, placement)] in log order; checks each line."""
    ranks, slots = report["ranks"], report["slots_per_rank"]
    layers, experts = report["layers"], report["experts"]
    history = {l: [] for l in range(layers)}
    bad = []
    lines = 0
    with open(path) as f:
        for line in f:
            lines += 1
            entry = json.loads(line)
            p, l = entry["placement"], entry["layer"]
            ok = (l in history and len(p) == ranks
                  and all(len(r) == slots and len(set(r)) == slots for r in p)
                  and {e for r in p for e in r} == set(range(experts)))
            if not ok:
                bad.append(f"step {entry['step']} layer {l}")
                continue
            history[l].append((entry["step"], p))
    unlogged = [l for l in range(layers) if not history[l] or history[l][0][0] != 0]
    tally.check(not bad and not unlogged,
                f"placement log: {lines} lines, each a valid placement, every layer "
                f"from step 0" + (f"; invalid: {bad[:EXAMPLES]}" if bad else "")
                + (f"; layers not logged at step 0: {unlogged[:EXAMPLES]}" if unlogged else ""))
    return history


def read_rank_loads(tally, path, report):
    """loads[(step, layer)] = [tokens of each rank] (None where missing);
    checks the header, the rows' fields and that each row is there once."""
    steps, layers, ranks = report["steps"], report["layers"], report["ranks"]
    loads = {(s, l): [None] * ranks for s in range(steps) for l in range(layers)}
    problems = []
    rows = 0
    whole = re.compile(r"0|[1-9][0-9]*")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        for row in reader:
            rows += 1
            if len(row) != 4 or not all(whole.fullmatch(x) for x in row):
                problems.append(f"row {rows} {row}: not four non-negative integers")
                continue
            s, l, r, tokens = map(int, row)
            if (s, l) not in loads or r >= ranks:
                problems.append(f"row {rows} {row}: no such step, layer or rank")
            elif loads[(s, l)][r] is not None:
                problems.append(f"row {rows} {row}: repeats step {s} layer {l} rank {r}")
            else:
                loads[(s, l)][r] = tokens
    missing = sum(x is None for load in loads.values() for x in load)
    if missing:
        problems.append(f"{missing} (step, layer, rank) rows missing")
    tally.check(header == RANK_LOAD_HEADER and not problems,
                f"rank-load log: header {','.join(header or [])}, {rows} rows for "
                f"{steps} steps x {layers} layers x {ranks} ranks"
                + (f"; {'; '.join(problems[:EXAMPLES])}" if problems else ""))
    return loads


# --- The check ---------------------------------------------------------------

def main():
    eplb, trace_path, work, targets, extra = parse_args(sys.argv[1:])
    started = time.monotonic()
    if eplb is not None:
        run_replay(eplb, trace_path, work, extra)
        print(f"replayed in {time.monotonic() - started:.1f} s")
    with open(os.path.join(work, REPORT)) as f:
        report = json.load(f)
    ranks, slots, layers = report["ranks"], report["slots_per_rank"], report["layers"]
    dispatch = report["dispatch"]
    tally = Tally()
    if not tally.check(dispatch in ("rr", "balanced"), f"dispatch '{dispatch}' known"):
        return 1

    trace = read_trace(trace_path, report["batch_steps"])
    history = read_placements(tally, os.path.join(work, PLACEMENTS), report)
    loads = read_rank_loads(tally, os.path.join(work, RANK_LOADS), report)
    if tally.failed:
        print(f"{tally.passed} passed, {tally.failed} failed")
        return 1

    # Walk the steps in order, keeping per layer the placement serving.
    serving = {}  # layer -> (replicas: expert -> physical ids, holders: expert -> ranks)
    next_entry = {l: 0 for l in range(layers)}
    whole_bad, sum_bad, rr_bad, flow_bad, peak_bad, optimum_bad = [], [], [], [], [], []
    from_placement, from_log, from_log_steady = [], [], []
    steady_from = report["steady_from"]
    pairs = 0
    for s in range(report["steps"]):
        for l in range(layers):
            h = history[l]
            if next_entry[l] < len(h) and h[next_entry[l]][0] <= s:
                while next_entry[l] < len(h) and h[next_entry[l]][0] <= s:
                    next_entry[l] += 1
                p = h[next_entry[l] - 1][1]
                replicas = {}
                for r in range(ranks):
                    for k in range(slots):
                        replicas.setdefault(p[r][k], []).append(r * slots + k)
                holders = {e: tuple(sorted({phy // slots for phy in reps}))
                           for e, reps in replicas.items()}
                serving[l] = (replicas, holders)
            replicas, holders = serving[l]
            counts = {e: n for e, n in trace.get((s, l), {}).items() if n > 0}
            load = loads[(s, l)]
            pairs += 1
            rr = round_robin(replicas, counts, ranks, slots)
            if sum(load) != sum(counts.values()):
                sum_bad.append(((s, l), f"ranks sum {sum(load)}, trace {sum(counts.values())}"))
                continue
            x = imbalance(load)
            if x is not None:
                from_log.append(x)
                if 0 <= steady_from <= s:
                    from_log_steady.append(x)
                from_placement.append(imbalance(rr))
            if dispatch == "rr":
                if load != rr:
                    rr_bad.append(((s, l), f"logged {load}, round robin {rr}"))
                continue
            groups = {}
            for e, n in counts.items():
                groups[holders[e]] = groups.get(holders[e], 0) + n
            if not can_dispatch(groups, load):
                flow_bad.append(((s, l), f"logged {load} is no dispatch of the placement"))
                continue
            if max(load) > max(rr):
                peak_bad.append(((s, l), f"peak {max(load)} > round robin's {max(rr)}"))
            best = least_peak(groups, ranks, -(-sum(load) // ranks), max(rr))
            if max(load) != best:
                optimum_bad.append(((s, l), f"peak {max(load)}, least possible {best}"))

    tally.check_pairs(sum_bad, pairs, "ranks' tokens sum to the trace's tokens")
    if dispatch == "rr":
        tally.check_pairs(rr_bad, pairs, "rank loads equal the round-robin split of the "
                          "placement serving")
    else:
        tally.check_pairs(flow_bad, pairs, "rank loads feasible for the placement serving "
                          "(max flow experts -> holding ranks carries every token)")
        tally.check_pairs(peak_bad, pairs, "busiest rank no busier than under round robin")
        tally.check_pairs(optimum_bad, pairs, "busiest rank at the least possible peak "
                          "(binary search on a max flow with every rank capped)")

    check_figures(tally, summarise(from_log), report["imbalance"], "imbalance from rank-load log")
    if dispatch == "rr":
        check_figures(tally, summarise(from_placement), report["imbalance"],
                      "imbalance from placement log")
    if steady_from >= 0:
        check_figures(tally, summarise(from_log_steady), report["imbalance_steady"],
                      f"steady imbalance (steps >= {steady_from}) from rank-load log")
    else:
        print("     no steady figures (steady_from < 0)")

    mine = summarise(from_log) or {"median": 0.0, "p90": 0.0}
    rr_mine = summarise(from_placement) or {"median": 0.0, "p90": 0.0}
    print(f"policy {report['policy']}, {dispatch} dispatch: median {mine['median']:.3f} "
          f"p90 {mine['p90']:.3f} (round robin on the same placements {rr_mine['median']:.3f}"
          f" / {rr_mine['p90']:.3f}; no balancing {report['baseline_imbalance']['median']:.3f}"
          f" / {report['baseline_imbalance']['p90']:.3f}), rebalances {report['rebalances']}, "
          f"moved per rebalance {100 * report['moved_per_rebalance']:.1f}% of slots, "
          f"max stall {report['max_stall_ms']} ms")
    got = {"median": mine["median"], "p90": mine["p90"], "moved": report["moved_per_rebalance"]}
    for key, most in targets.items():
        tally.check(got[key] <= most, f"target {key}: {got[key]:.4f} <= {most}")
    print(f"checked in {time.monotonic() - started:.1f} s")
    print(f"{tally.passed} passed, {tally.failed} failed")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
