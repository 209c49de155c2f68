#!/usr/bin/env python3
"""Times DeepSeek's algorithm (the numpy reference in
python/tests/deepseek_reference.py, structured as DeepSeek's eplb.py) on the
synthetic Zipf loads of bench/wide_main.cc, bit for bit the same loads.

Usage: wide_reference.py EXPERTS RANKS SLOTS
Prints one line: "<plan ms> <mean imbalance> <worst layer>" (best of 3 runs,
or one run when a run takes over 2 s). eplb_bench_wide runs it for its
"DeepSeek reference" column when python3 with numpy is present.
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "python", "tests"))
from deepseek_reference import deepseek_phy2log  # noqa: E402

MASK = (1 << 64) - 1
LAYERS = 58


class SplitMix:
    def __init__(self, state):
        self.s = state & MASK

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def unit(self):
        return (self.next() >> 11) / 9007199254740992.0


def zipf_load(experts, seed):
    """The loads of ZipfLoad in bench/wide_main.cc."""
    load = np.zeros((LAYERS, experts))
    for layer in range(LAYERS):
        rng = SplitMix(seed * 1000003 + layer)
        q = experts / 32.0 + rng.unit() * (experts / 16.0 - experts / 32.0)
        perm = list(range(experts))
        for i in range(experts - 1, 0, -1):
            j = rng.next() % (i + 1)
            perm[i], perm[j] = perm[j], perm[i]
        for r in range(experts):
            load[layer, perm[r]] = 1e6 / (r + q) * (0.8 + 0.4 * rng.unit())
    return load


def imbalance(load, phy2log, ranks):
    out = []
    for w, row in zip(load, phy2log):
        cnt = np.bincount(row, minlength=len(w))
        rank_load = (w[row] / cnt[row]).reshape(ranks, -1).sum(1)
        out.append(rank_load.max() / rank_load.mean())
    return np.array(out)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[3])
    experts, ranks, slots = (int(a) for a in sys.argv[1:])
    load = zipf_load(experts, 7)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        phy2log = deepseek_phy2log(load, ranks * slots, 1, 1, ranks)
        best = min(best, (time.perf_counter() - start) * 1e3)
        if best > 2000:
            break
    per_layer = imbalance(load, phy2log, ranks)
    print(f"{best:.1f} {per_layer.mean():.4f} {per_layer.max():.4f}")


if __name__ == "__main__":
    main()
