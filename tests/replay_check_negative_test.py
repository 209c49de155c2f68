#!/usr/bin/env python3
"""replay_check.py must fail on wrong rank-load logs, stdlib only.

Replays the first STEPS steps of a trace under rr and balanced dispatch with
replay_check.py (which must pass), then writes corrupted copies of each run's
rank-load log and re-checks each with `replay_check.py --check-only`, which
must exit 1 with the check named for that corruption among its failures:

  moved      tokens moved from one rank to another at a step where the
             placement changed, so that the receiving rank gets more than the
             experts it holds have (the sum is unchanged);
  missing    one row left out;
  wrong-sum  one rank given one token more;
  not-least  (balanced) one (step, layer) given the round-robin split, a
             feasible dispatch whose busiest rank is busier than need be.

Usage: replay_check_negative_test.py CHECKER EPLB TRACE_CSV WORK_DIR
Prints 'N passed, M failed'; exits 1 on any failure."""
import csv
import json
import os
import shutil
import subprocess
import sys

STEPS = 120  # Enough for several rebalances at heat interval 16.
REPLAY = ["--ranks", "8", "--redundant", "8", "--policy", "swift",
          "--heat-interval", "16", "--algo-interval", "2", "--no-pace"]
FILES = ("report.json", "placements.jsonl", "rank_loads.csv")


def run_checker(checker, args):
    out = subprocess.run([sys.executable, checker] + args, capture_output=True, text=True)
    return out.returncode, out.stdout + out.stderr


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header] + rows)


def corruptions(run_dir, trace_rows, dispatch):
    """Yields (name, check expected to fail, rank-load rows)."""
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    ranks = report["ranks"]
    header, rows = read_csv(os.path.join(run_dir, "rank_loads.csv"))
    index = {(int(s), int(l), int(r)): i for i, (s, l, r, _) in enumerate(rows)}
    counts = {}  # (step, layer) -> expert -> tokens
    for s, l, e, n in trace_rows:
        per_expert = counts.setdefault((int(s), int(l)), {})
        per_expert[int(e)] = per_expert.get(int(e), 0) + int(n)
    with open(os.path.join(run_dir, "placements.jsonl")) as f:
        changes = [json.loads(line) for line in f]
    # A change after step 0 at a (step, layer) with tokens: the corruption
    # there must be judged against the new placement.
    change = next(c for c in changes
                  if c["step"] > 0 and sum(counts.get((c["step"], c["layer"]), {}).values()))
    s, l, placement = change["step"], change["layer"], change["placement"]
    load = [int(rows[index[(s, l, r)]][3]) for r in range(ranks)]
    have = counts[(s, l)]
    # What each rank's experts have at most, and the least moved that exceeds it.
    reach = [sum(have.get(e, 0) for e in placement[r]) for r in range(ranks)]
    delta, to, src = min((reach[b] + 1 - load[b], b, a) for b in range(ranks)
                         for a in range(ranks) if a != b and load[a] >= reach[b] + 1 - load[b])
    moved = [row[:] for row in rows]
    moved[index[(s, l, to)]][3] = str(load[to] + delta)
    moved[index[(s, l, src)]][3] = str(load[src] - delta)
    print(f"     step {s} layer {l}: {delta} token(s) moved from rank {src} to rank {to}, "
          f"whose experts have {reach[to]}")
    yield ("moved", "round-robin split" if dispatch == "rr" else "feasible", moved)
    yield ("missing", "rank-load log", rows[:len(rows) // 2] + rows[len(rows) // 2 + 1:])
    wrong = [row[:] for row in rows]
    wrong[index[(s, l, 0)]][3] = str(load[0] + 1)
    yield ("wrong-sum", "sum to the trace", wrong)
    if dispatch == "balanced":
        # Round robin over the placement serving at each (step, layer), put in
        # at the first pair where its busiest rank is busier than the log's.
        slots = report["slots_per_rank"]
        serving = {}
        for c in changes:
            serving.setdefault(c["layer"], []).append((c["step"], c["placement"]))
        for (s, l), have in sorted(counts.items()):
            placement = [p for start, p in serving[l] if start <= s][-1]
            replicas = {}
            for r in range(ranks):
                for k in range(slots):
                    replicas.setdefault(placement[r][k], []).append(r * slots + k)
            rr = [0] * ranks
            for e, n in have.items():
                reps = sorted(replicas[e])
                for j, phy in enumerate(reps):
                    rr[phy // slots] += n // len(reps) + (1 if j < n % len(reps) else 0)
            logged = [int(rows[index[(s, l, r)]][3]) for r in range(ranks)]
            if max(rr) > max(logged):
                worse = [row[:] for row in rows]
                for r in range(ranks):
                    worse[index[(s, l, r)]][3] = str(rr[r])
                print(f"     step {s} layer {l}: round robin {rr} for the logged {logged}")
                yield ("not-least", "least possible peak", worse)
                break


def main():
    checker, eplb, trace, work = sys.argv[1:5]
    os.makedirs(work, exist_ok=True)
    header, trace_rows = read_csv(trace)
    trace_rows = [row for row in trace_rows if int(row[0]) < STEPS]
    short = os.path.join(work, "trace.csv")
    write_csv(short, header, trace_rows)
    passed = failed = 0

    def expect(ok, what):
        nonlocal passed, failed
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        passed, failed = passed + ok, failed + (not ok)

    for dispatch in ("rr", "balanced"):
        good = os.path.join(work, dispatch, "good")
        rc, out = run_checker(checker, [eplb, short, good] + REPLAY + ["--dispatch", dispatch])
        expect(rc == 0, f"{dispatch}: the checker passes the replay's own logs")
        if rc != 0:
            print(out)
            continue
        for name, check, rows in corruptions(good, trace_rows, dispatch):
            bad = os.path.join(work, dispatch, name)
            os.makedirs(bad, exist_ok=True)
            for f in FILES:
                shutil.copyfile(os.path.join(good, f), os.path.join(bad, f))
            rl_header, _ = read_csv(os.path.join(good, "rank_loads.csv"))
            write_csv(os.path.join(bad, "rank_loads.csv"), rl_header, rows)
            rc, out = run_checker(checker, ["--check-only", bad, short])
            fails = [line for line in out.splitlines() if line.startswith("FAIL")]
            ok = rc == 1 and any(check in line for line in fails)
            expect(ok, f"{dispatch} {name}: the checker exits {rc}, failing "
                       f"{len(fails)} check(s), '{check}' among them")
            if not ok:
                print(out)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
