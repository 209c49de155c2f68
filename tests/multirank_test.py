#!/usr/bin/env python3
"""eplb replay with one process per rank (mpirun), checked from its JSON.

Usage: multirank_test.py MPIEXEC EPLB NP CASE [GEN_TRACE]
CASE:
  serve     the shipped trace with --verify-outputs: every step served, at
            least one rebalance, bytes moved, no output mismatch, no plan-hash
            mismatch, one process per rank;
  fail      the same with rank 2 failing at step 30: the trace finishes on
            NP - 1 ranks, no token dropped, none mismatched, delayed tokens
            counted;
  lockstep  --no-pace, with and without a failure: the job over MPI gives the
            figures of the same replay in one process;
  corrupt   --corrupt-every 7: layers abort, outputs stay exact; with
            --forge-checksums the corruption commits and --verify-outputs
            must catch it (outputs_mismatched > 0);
  burst     a generated `burst` trace (GEN_TRACE: eplb_gen_trace), --no-pace,
            Swift under balanced dispatch: shifts end and are forgotten, their
            layers migrate back, and the job over MPI gives the figures of the
            same replay in one process, with no plan-hash mismatch (every rank
            forgets the same steps).
Prints what it checked; exits 1 on any failure. Stdlib only."""
import json
import os
import subprocess
import sys
import tempfile

MPI_FLAGS = ["--allow-run-as-root", "--oversubscribe"]
FAIL = ["--fail-rank", "2", "--fail-at-step", "30", "--rank-timeout-ms", "2000"]
# Figures that do not depend on timing (the lockstep simulation).
LOCKSTEP_KEYS = ["steps", "rebalances", "layers_committed", "layers_aborted",
                 "experts_moved", "bytes_moved", "imbalance", "imbalance_steady",
                 "outputs_verified", "outputs_mismatched", "ranks_failed",
                 "final_ranks", "tokens_dropped", "tokens_delayed",
                 "recovery_steps", "experts_lost", "experts_reloaded",
                 "layers_kept", "layers_incremental", "layers_full",
                 "layers_reverted"]

failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (f" ({detail})" if detail else ""))
    if not ok:
        failures.append(name)


def replay(cmd, extra):
    out = subprocess.run(cmd + ["replay", "--json"] + extra, capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        print(out.stdout + out.stderr)
        raise SystemExit(f"FAIL {' '.join(cmd + extra)}: exit {out.returncode}")
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if len(lines) != 1:
        print(out.stdout + out.stderr)
        raise SystemExit("FAIL: expected exactly one JSON line (rank 0 prints)")
    return json.loads(lines[0])


def burst(mpiexec, eplb, np, gen_trace):
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "burst.csv")
        subprocess.run([gen_trace, "--family", "burst", "--seed", "11",
                        "--out", trace], check=True, capture_output=True,
                       timeout=300)
        common = ["--trace", trace, "--ranks", str(np), "--redundant", str(np),
                  "--heat-interval", "16", "--algo-interval", "2",
                  "--policy", "swift", "--dispatch", "balanced", "--no-pace"]
        a = replay([mpiexec] + MPI_FLAGS + ["-np", str(np), eplb],
                   common + ["--transport", "mpi"])
        b = replay([eplb], common)
    keys = ["steps", "rebalances", "layers_committed", "layers_aborted",
            "experts_moved", "bytes_moved", "imbalance", "imbalance_steady",
            "layers_kept", "layers_incremental", "layers_full",
            "layers_reverted", "shifts_reverted", "plans_superseded"]
    diff = [k for k in keys if a[k] != b[k]]
    check("MPI job == one process", not diff,
          ", ".join(f"{k}: {a[k]} vs {b[k]}" for k in diff))
    check("shifts ended", b["shifts_reverted"] > 0, str(b["shifts_reverted"]))
    check("layers migrated back", b["layers_reverted"] > 0,
          str(b["layers_reverted"]))
    check("no plan-hash mismatch", a["plan_hash_mismatches"] == 0,
          str(a["plan_hash_mismatches"]))
    check("one process per rank", a["processes"] == np, str(a["processes"]))


def main():
    if len(sys.argv) not in (5, 6):
        raise SystemExit(__doc__)
    mpiexec, eplb, np, case = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if case == "burst":
        if len(sys.argv) != 6:
            raise SystemExit(__doc__)
        burst(mpiexec, eplb, np, sys.argv[5])
        print(f"{len(failures)} failed")
        return 1 if failures else 0
    mpi = [mpiexec] + MPI_FLAGS + ["-np", str(np), eplb]
    local = [eplb]
    common = ["--ranks", str(np), "--redundant", str(np), "--verify-outputs"]
    over_mpi = ["--transport", "mpi"]
    # The trace's steps: one process, no pacing.
    steps = replay(local, common + ["--no-pace"])["steps"]

    if case == "serve":
        r = replay(mpi, common + over_mpi)
        check("every step served", r["steps"] == steps, f"{r['steps']} of {steps}")
        check("one process per rank", r["processes"] == np, str(r["processes"]))
        check("at least one rebalance", r["rebalances"] >= 1, str(r["rebalances"]))
        check("layers committed", r["layers_committed"] > 0, str(r["layers_committed"]))
        check("bytes moved", r["bytes_moved"] > 0, str(r["bytes_moved"]))
        check("outputs verified", r["outputs_verified"] > 0, str(r["outputs_verified"]))
        check("no output mismatched", r["outputs_mismatched"] == 0,
              str(r["outputs_mismatched"]))
        check("no plan-hash mismatch", r["plan_hash_mismatches"] == 0,
              str(r["plan_hash_mismatches"]))
        check("no rank failed", r["ranks_failed"] == 0 and r["final_ranks"] == np)
    elif case == "fail":
        r = replay(mpi, common + over_mpi + FAIL)
        check("every step served", r["steps"] == steps, f"{r['steps']} of {steps}")
        check("one rank failed", r["ranks_failed"] == 1, str(r["ranks_failed"]))
        check("the survivors serve on", r["final_ranks"] == np - 1, str(r["final_ranks"]))
        check("no token dropped", r["tokens_dropped"] == 0, str(r["tokens_dropped"]))
        check("tokens of reloaded experts counted as delayed",
              r["tokens_delayed"] > 0 and r["experts_lost"] > 0,
              f"{r['tokens_delayed']} tokens, {r['experts_lost']} experts")
        check("recovered", r["recovery_steps"] >= 1, str(r["recovery_steps"]))
        check("no output mismatched", r["outputs_mismatched"] == 0,
              str(r["outputs_mismatched"]))
        check("outputs verified", r["outputs_verified"] > 0, str(r["outputs_verified"]))
        check("no plan-hash mismatch", r["plan_hash_mismatches"] == 0,
              str(r["plan_hash_mismatches"]))
    elif case == "lockstep":
        for name, extra in (("no failure", []), ("rank 2 failing", FAIL)):
            a = replay(mpi, common + over_mpi + ["--no-pace"] + extra)
            b = replay(local, common + ["--no-pace"] + extra)
            diff = [k for k in LOCKSTEP_KEYS if a[k] != b[k]]
            check(f"{name}: MPI job == one process", not diff,
                  ", ".join(f"{k}: {a[k]} vs {b[k]}" for k in diff))
            check(f"{name}: processes", a["processes"] == np and b["processes"] == 1)
    elif case == "corrupt":
        plain = replay(mpi, common + over_mpi + ["--no-pace", "--corrupt-every", "7"])
        check("corrupted layers abort", plain["layers_aborted"] > 0,
              str(plain["layers_aborted"]))
        check("outputs stay exact", plain["outputs_mismatched"] == 0,
              str(plain["outputs_mismatched"]))
        r = replay(mpi, common + over_mpi +
                   ["--no-pace", "--corrupt-every", "7", "--forge-checksums"])
        # Forged transfers commit. A later, honest transfer of an expert whose
        # forged checksum the migration engine learnt may still abort, so
        # fewer layers abort rather than none.
        check("forged checksums commit",
              r["layers_aborted"] < plain["layers_aborted"] and
              r["layers_committed"] > plain["layers_committed"],
              f'aborted {r["layers_aborted"]} vs {plain["layers_aborted"]}, '
              f'committed {r["layers_committed"]} vs {plain["layers_committed"]}')
        check("--verify-outputs catches the corruption", r["outputs_mismatched"] > 0,
              str(r["outputs_mismatched"]))
    else:
        raise SystemExit(f"unknown case {case}")
    print(f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
