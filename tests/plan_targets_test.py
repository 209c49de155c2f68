#!/usr/bin/env python3
"""`eplb plan` on every DeepSeek-V3 workload at EP32 with
288 slots writes a map that `eplb validate-map` accepts, and whose imbalance,
recomputed here independently of the project's code (stdlib only), meets the
targets. Usage: plan_targets_test.py EPLB_BINARY DATA_DIR WORK_DIR"""
import json
import os
import subprocess
import sys

EPLB, DATA, WORK = sys.argv[1:4]
RANKS, SLOTS = 32, 9
# policy -> (max mean over layers, max worst layer)
TARGETS = {
    "default": (1.0078 + 0.001, 1.014 + 0.001),  # The reference's balance.
    "swift": (1.03, None),
    "flashlb": (1.003, 1.01),
    "best": (1.001, 1.002),
}


def load_sglang(path):
    rows = json.load(open(path))["logical_count"]
    while rows and not any(rows[0]):  # Leading dense layers.
        rows = rows[1:]
    return rows


def imbalance(map_path, load):
    doc = json.load(open(map_path))
    layers = sorted(doc["layer_list"], key=lambda l: l["layer_id"])
    assert len(layers) == len(load), "layer count"
    out = []
    for layer, w in zip(layers, load):
        devices = sorted(layer["device_list"], key=lambda d: d["device_id"])
        assert len(devices) == RANKS
        count = [0] * len(w)
        for d in devices:
            assert len(d["device_expert"]) == SLOTS
            assert len(set(d["device_expert"])) == SLOTS, "co-located replicas"
            for e in d["device_expert"]:
                count[e] += 1
        assert min(count) >= 1, "an expert on no device"
        ranks = [sum(w[e] / count[e] for e in d["device_expert"]) for d in devices]
        out.append(max(ranks) / (sum(ranks) / RANKS))
    return out


def main():
    os.makedirs(WORK, exist_ok=True)
    failures = 0
    for name in sorted(os.listdir(DATA)):
        load_path = os.path.join(DATA, name)
        load = load_sglang(load_path)
        for policy, (mean_max, worst_max) in TARGETS.items():
            out = os.path.join(WORK, f"{policy}_{name}")
            subprocess.run([EPLB, "plan", "--load", load_path, "--ranks", str(RANKS),
                            "--slots-per-rank", str(SLOTS), "--policy", policy,
                            "--out", out], check=True, capture_output=True)
            subprocess.run([EPLB, "validate-map", out, "--ranks", str(RANKS),
                            "--experts", "256", "--layers", "58"], check=True,
                           capture_output=True)
            per_layer = imbalance(out, load)
            mean, worst = sum(per_layer) / len(per_layer), max(per_layer)
            ok = mean <= mean_max and (worst_max is None or worst <= worst_max)
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {policy:8s} {name:28s} "
                  f"mean {mean:.5f} (<= {mean_max:.4f}) worst {worst:.5f}"
                  + (f" (<= {worst_max:.4f})" if worst_max else ""))
    print(f"{32 - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
