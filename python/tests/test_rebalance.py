"""eplb.rebalance_experts and the vLLM policy classes, from Python.

The balance is compared with an independent numpy implementation of
DeepSeek's published algorithm (deepseek_reference.py beside this file)."""
import json
import os

import numpy as np
import pytest

import eplb
import eplb.vllm

try:
    import torch
except ImportError:  # pragma: no cover - python3-torch is optional
    torch = None

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "data", "dsv3-sglang")
# DeepSeek's README example: 2 layers, 12 experts in 4 groups, 16 replicas on
# 2 nodes of 4 GPUs.
README_WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                 [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]


from deepseek_reference import deepseek_phy2log as _deepseek_phy2log  # noqa: E402


def _imbalance(weight, phy2log, num_gpus):
    weight = np.asarray(weight, np.float64)
    out = []
    for w, row in zip(weight, np.asarray(phy2log)):
        cnt = np.bincount(row, minlength=len(w))
        per_slot = w[row] / cnt[row]
        ranks = per_slot.reshape(num_gpus, -1).sum(1)
        out.append(ranks.max() / ranks.mean() if ranks.mean() > 0 else 1.0)
    return np.array(out)


def _check_maps(phy2log, log2phy, logcnt, num_experts, num_gpus):
    phy2log, log2phy, logcnt = (np.asarray(a) for a in (phy2log, log2phy, logcnt))
    layers, num_phy = phy2log.shape
    assert log2phy.shape == (layers, num_experts, num_phy - num_experts + 1)
    assert logcnt.shape == (layers, num_experts)
    for l in range(layers):
        assert (np.bincount(phy2log[l], minlength=num_experts) == logcnt[l]).all()
        assert logcnt[l].min() >= 1
        for e in range(num_experts):
            ids = log2phy[l, e]
            real = ids[ids >= 0]
            assert len(real) == logcnt[l, e]
            assert (ids[len(real):] == -1).all()
            assert (phy2log[l, real] == e).all()
            assert list(real) == sorted(real)
        for r in phy2log[l].reshape(num_gpus, -1):
            assert len(set(r)) == len(r), "two replicas of an expert on one rank"


def _dsv3(name):
    with open(os.path.join(DATA, name)) as f:
        rows = json.load(f)["logical_count"]
    return np.array([r for r in rows if sum(r) > 0], np.float64)  # MoE layers


# --- tests ----------------------------------------------------------------
def test_readme_example_numpy():
    w = np.array(README_WEIGHT, np.int64)
    phy2log, log2phy, logcnt = eplb.rebalance_experts(w, 16, 4, 2, 8)
    for a in (phy2log, log2phy, logcnt):
        assert isinstance(a, np.ndarray) and a.dtype == np.int64
    assert phy2log.shape == (2, 16)
    assert log2phy.shape == (2, 12, 5)
    _check_maps(phy2log, log2phy, logcnt, 12, 8)
    ours = _imbalance(w, phy2log, 8)
    ref = _imbalance(w, _deepseek_phy2log(w, 16, 4, 2, 8), 8)
    assert (ours <= ref + 1e-3).all(), (ours, ref)


@pytest.mark.skipif(torch is None, reason="python3-torch not installed")
def test_readme_example_torch():
    w = torch.tensor(README_WEIGHT)
    out = eplb.rebalance_experts(w, 16, 4, 2, 8)
    for a in out:
        assert isinstance(a, torch.Tensor) and a.dtype == torch.int64
    assert [tuple(a.shape) for a in out] == [(2, 16), (2, 12, 5), (2, 12)]
    same = eplb.rebalance_experts(np.array(README_WEIGHT), 16, 4, 2, 8)
    for a, b in zip(out, same):
        assert (a.numpy() == b).all()


@pytest.mark.parametrize("name", ["prefill_in1024.json", "decode_in1000out1000.json"])
def test_dsv3_balance_matches_deepseek(name):
    w = _dsv3(name)
    assert w.shape == (58, 256)
    phy2log, log2phy, logcnt = eplb.rebalance_experts(w, 288, 8, 1, 32)
    _check_maps(phy2log, log2phy, logcnt, 256, 32)
    ours = _imbalance(w, phy2log, 32)
    ref = _imbalance(w, _deepseek_phy2log(w, 288, 8, 1, 32), 32)
    # Per layer: as balanced as DeepSeek's reference, within 0.001.
    assert (ours <= ref + 1e-3).all(), np.max(ours - ref)
    for policy in ("swift", "flashlb", "best"):
        p, _, _ = eplb.rebalance_experts(w, 288, 8, 1, 32, policy=policy)
        assert (_imbalance(w, p, 32) <= ref + 1e-3).mean() > 0.9, policy


def test_incremental_policy_moves_less_from_current():
    a, b = _dsv3("prefill_in1024.json"), _dsv3("prefill_in2048.json")
    current, _, _ = eplb.rebalance_experts(a, 288, 8, 1, 32)

    def moved(new):
        return sum(len(set(n) - set(c)) for lc, ln in zip(current, new)
                   for c, n in zip(lc.reshape(32, -1), ln.reshape(32, -1)))

    fresh, _, _ = eplb.rebalance_experts(b, 288, 8, 1, 32)
    swift, _, _ = eplb.rebalance_experts(b, 288, 8, 1, 32, policy="swift",
                                         current=current)
    assert moved(swift) < moved(fresh) / 2
    assert _imbalance(b, swift, 32).mean() < _imbalance(b, current, 32).mean()


def test_plans_are_deterministic():
    w = _dsv3("prefill_in512.json")
    runs = [eplb.rebalance_experts(w, 288, 8, 1, 32, policy="flashlb")[0]
            for _ in range(2)]
    assert (runs[0] == runs[1]).all()


@pytest.mark.parametrize("args,field", [
    (([[1.0, 2.0]], 3, 1, 1, 2), "num_replicas = 3"),
    (([[1.0, 2.0]], 1, 1, 1, 1), "num_replicas = 1"),
    (([[1.0, 2.0]], 4, 1, 3, 2), "num_nodes = 3"),
    (([[1.0, -2.0]], 4, 1, 1, 2), "weight"),
    (([[1.0, float("nan")]], 4, 1, 1, 2), "weight"),
    (([1.0, 2.0], 4, 1, 1, 2), "weight: must be 2-D"),
    ((["a", "b"], 4, 1, 1, 2), "weight"),
])
def test_bad_input_names_the_argument(args, field):
    with pytest.raises(eplb.EplbError) as e:
        eplb.rebalance_experts(*args)
    assert field in str(e.value)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_bad_current_and_policy():
    w = np.ones((1, 4))
    with pytest.raises(eplb.EplbError, match="current"):
        eplb.rebalance_experts(w, 4, 1, 1, 2, current=np.array([[0, 0, 1, 2]]))
    with pytest.raises(eplb.EplbError, match="current"):
        eplb.rebalance_experts(w, 4, 1, 1, 2, current=np.array([[0, 1, 2, 9]]))
    with pytest.raises(eplb.EplbError, match="policy"):
        eplb.rebalance_experts(w, 4, 1, 1, 2, policy="nope")


def test_vllm_policy_classes():
    w = np.array(README_WEIGHT, np.float64)
    for cls in (eplb.vllm.DefaultEplbPolicy, eplb.vllm.SwiftEplbPolicy,
                eplb.vllm.FlashLBEplbPolicy, eplb.vllm.BestEplbPolicy):
        phy2log, log2phy, logcnt = cls.rebalance_experts(w, 16, 4, 2, 8)
        _check_maps(phy2log, log2phy, logcnt, 12, 8)
    current, _, _ = eplb.vllm.DefaultEplbPolicy.rebalance_experts(w, 16, 4, 2, 8)
    again, _, _ = eplb.vllm.SwiftEplbPolicy.rebalance_experts(
        w, 16, 4, 2, 8, old_global_expert_indices=current)
    assert again.shape == current.shape
    assert np.bincount(again[0], minlength=12).min() >= 1
    assert issubclass(eplb.vllm.SwiftEplbPolicy, eplb.vllm._Base)
