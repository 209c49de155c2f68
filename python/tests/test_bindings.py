"""The heat recorder, balanced dispatch, config, maps and replay from Python."""
import json
import os

import numpy as np
import pytest

import eplb

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
TRACE = os.path.join(ROOT, "data", "dsv2lite-puffin", "prefill_by_prompt.csv")


def test_heat_recorder_counts_through_log2phy():
    rec = eplb.HeatRecorder(num_layers=2, num_experts=4, num_slots=6)
    log2phy = np.array([0, 1, 2, 3], np.int32)
    rec.record_topk(0, np.array([[0, 1], [0, 3], [7, 0]], np.int64), log2phy)
    rec.record_topk(1, np.array([2, 2, 2], np.int32), log2phy)
    rec.end_step(3)
    snap = rec.snapshot()
    assert snap["steps_counted"] == 1
    assert snap["dropped_ids"] == 1  # Expert 7 is out of range.
    assert snap["window"].shape == (2, 6)
    assert list(snap["window"][0]) == [3, 1, 0, 1, 0, 0]
    assert list(snap["window"][1]) == [0, 0, 3, 0, 0, 0]
    assert snap["samples"].shape == (1, 2, 6)
    with pytest.raises(eplb.EplbError, match="layer = 2"):
        rec.record_topk(2, np.array([0], np.int32), log2phy)
    with pytest.raises(eplb.EplbError, match="log2phy"):
        rec.record_topk(0, np.array([0], np.int32), np.array([0, 1], np.int32))
    with pytest.raises(eplb.EplbError, match="stage"):
        eplb.HeatRecorder(1, 4, 4, stage="sometimes")


@pytest.mark.skipif(torch is None, reason="python3-torch not installed")
def test_heat_recorder_takes_torch_tensors():
    rec = eplb.HeatRecorder(1, 4, 4)
    rec.record_topk(0, torch.tensor([[1, 2]]), torch.tensor([0, 1, 2, 3],
                                                           dtype=torch.int32))
    rec.end_step(1)
    assert list(rec.snapshot()["window"][0]) == [0, 1, 1, 0]
    d = eplb.BalancedDispatcher(3, 2, 2)
    d.set_placement(torch.tensor([0, 1, 0, 2], dtype=torch.int32))
    quota, peak = d.compute_quotas(torch.tensor([6, 1, 1]))
    assert isinstance(quota, torch.Tensor) and peak == 4
    phys = d.map_tokens(torch.tensor([[0, 1], [0, 2]]))
    assert isinstance(phys, torch.Tensor) and phys.dtype == torch.int64
    assert phys.tolist() == [[0, 1], [0, 3]]
    counts, offsets = eplb.global_counts_and_offsets(
        torch.tensor([[2, 1, 0], [4, 0, 1]]), 1)
    assert isinstance(counts, torch.Tensor)
    assert counts.tolist() == [6, 1, 1] and offsets.tolist() == [2, 1, 0]
    d.compute_quotas(counts)  # Quotas [3, 1, 3, 1]: rank 1 starts at 2.
    phys = d.map_tokens(torch.tensor([0, 0, 0, 2]), offsets)
    assert phys.tolist() == [0, 2, 2, 3]


def test_balanced_dispatch_quotas_and_mapping():
    d = eplb.BalancedDispatcher(num_experts=3, num_ranks=2, slots_per_rank=2)
    d.set_placement(np.array([0, 1, 0, 2], np.int32))  # Expert 0 twice.
    quota, peak = d.compute_quotas(np.array([6, 1, 1], np.int64))
    assert list(quota) == [3, 1, 3, 1] and peak == 4
    ids = np.array([0, 0, 1, 0, 0, 2, 0, 0], np.int64)
    phys = d.map_tokens(ids)
    assert phys.dtype == np.int64 and phys.shape == ids.shape
    assert list(phys) == [0, 0, 1, 0, 2, 3, 2, 2]
    with pytest.raises(eplb.EplbError, match="placement"):
        d.set_placement(np.array([0, 0, 1, 2], np.int32))  # 0 twice on rank 0.
    with pytest.raises(eplb.EplbError, match="counts"):
        d.compute_quotas(np.array([1, -1, 0], np.int64))
    with pytest.raises(eplb.EplbError, match=r"counts\[2\] = 0.5: must be a whole"):
        d.compute_quotas(np.array([1, 2, 0.5]))
    assert list(d.compute_quotas(np.array([6.0, 1, 1]))[0]) == [3, 1, 3, 1]


def test_ranks_mapping_their_own_tokens_honour_the_quotas_together():
    # 4 experts on 3 ranks x 2 slots; experts 0 and 1 have two replicas.
    placement = np.array([0, 1, 0, 2, 1, 3], np.int32)
    rng = np.random.default_rng(7)
    ids = [rng.choice(4, size=40, p=[0.5, 0.3, 0.1, 0.1]) for _ in range(3)]
    rank_counts = np.stack([np.bincount(i, minlength=4) for i in ids])
    dispatchers, mapped = [], []
    for rank in range(3):
        counts, offsets = eplb.global_counts_and_offsets(rank_counts, rank)
        assert list(counts) == list(rank_counts.sum(axis=0))
        assert list(offsets) == list(rank_counts[:rank].sum(axis=0))
        d = eplb.BalancedDispatcher(4, 3, 2)
        d.set_placement(placement)
        quota, _ = d.compute_quotas(counts)
        mapped.append(d.map_tokens(ids[rank].astype(np.int64), offsets))
        dispatchers.append(quota)
    # Every rank computed the same quotas, and together the ranks sent each
    # slot exactly its quota, each token to a slot of its own expert.
    for quota in dispatchers[1:]:
        assert list(quota) == list(dispatchers[0])
    received = np.bincount(np.concatenate(mapped), minlength=6)
    assert list(received) == list(dispatchers[0])
    for rank in range(3):
        assert (placement[mapped[rank]] == ids[rank]).all()
    # Without the offsets every rank starts at the first replica, and the
    # quotas are not met.
    alone = []
    for rank in range(3):
        d = eplb.BalancedDispatcher(4, 3, 2)
        d.set_placement(placement)
        d.compute_quotas(rank_counts.sum(axis=0))
        alone.append(d.map_tokens(ids[rank].astype(np.int64)))
    assert list(np.bincount(np.concatenate(alone), minlength=6)) != list(
        dispatchers[0])


def test_global_counts_and_offsets_reject_bad_input():
    d = eplb.BalancedDispatcher(3, 2, 2)
    d.set_placement(np.array([0, 1, 0, 2], np.int32))
    d.compute_quotas(np.array([2, 1, 1], np.int64))
    ids = np.array([0, 1, 0, 2], np.int32)
    with pytest.raises(eplb.EplbError, match=r"offsets\[1\] = -1"):
        d.map_tokens(ids, np.array([0, -1, 0]))
    with pytest.raises(eplb.EplbError, match="offsets: has 2 entries"):
        d.map_tokens(ids, np.array([0, 0]))
    with pytest.raises(eplb.EplbError, match="must be a whole number"):
        d.map_tokens(ids, np.array([0.5, 0, 0]))
    assert d.map_tokens(ids, np.array([1.0, 0, 0])).dtype == np.int32
    with pytest.raises(eplb.EplbError, match=r"rank = 2: must be in \[0, 2\)"):
        eplb.global_counts_and_offsets(np.ones((2, 3), np.int64), 2)
    with pytest.raises(eplb.EplbError, match=r"rank_counts\[1\]\[2\] = -4"):
        eplb.global_counts_and_offsets(np.array([[1, 2, 3], [1, 2, -4]]), 0)
    with pytest.raises(eplb.EplbError, match="overflows int64"):
        big = np.iinfo(np.int64).max
        eplb.global_counts_and_offsets(np.array([[big], [1]]), 0)
    with pytest.raises(eplb.EplbError, match=r"\[ranks, experts\]"):
        eplb.global_counts_and_offsets(np.array([1, 2, 3]), 0)
    with pytest.raises(eplb.EplbError, match="whole number"):
        eplb.global_counts_and_offsets(np.array([[1.0, np.nan]]), 0)


def test_placements_must_be_whole_numbers_in_range():
    load = np.ones((1, 4))
    with pytest.raises(eplb.EplbError, match=r"current\[0, 1\] = 1.5"):
        eplb.rebalance_experts(load, 4, 1, 1, 2,
                               current=np.array([[0, 1.5, 2, 3]]))
    with pytest.raises(eplb.EplbError, match="out of int32 range"):
        eplb.plan(load, 2, 2, current=np.array([[[0, 1], [2, 2**40]]]))


def test_parse_config(monkeypatch):
    monkeypatch.setenv("DYNAMIC_EPLB", "true")
    c = eplb.parse_config(json.dumps({"dynamic_eplb": True,
                                      "num_redundant_experts": 16,
                                      "eplb_policy_type": 3}))
    assert c["mode"] == "dynamic"
    assert c["num_redundant_experts"] == 16 and c["eplb_policy_type"] == 3
    with pytest.raises(eplb.EplbError, match="eplb_policy_type"):
        eplb.parse_config('{"eplb_policy_type": 9}')
    monkeypatch.delenv("DYNAMIC_EPLB")
    with pytest.raises(eplb.EplbError, match="DYNAMIC_EPLB"):
        eplb.parse_config('{"dynamic_eplb": true}')


def test_maps_round_trip(tmp_path):
    placement = np.array([[[0, 1], [2, 3]], [[3, 2], [1, 0]]], np.int32)
    path = str(tmp_path / "map.json")
    eplb.write_expert_map(path, placement, 4)
    assert (eplb.read_expert_map(path) == placement).all()
    assert eplb.validate_map(placement, 4) == []
    bad = placement.copy()
    bad[0, 0, 1] = 0
    problems = eplb.validate_map(bad, 4)
    assert problems and "layer 0" in problems[0]
    with pytest.raises(eplb.EplbError):
        eplb.write_expert_map(str(tmp_path / "bad.json"), bad, 4)
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(eplb.EplbError, match="nope.json"):
        eplb.read_expert_map(str(tmp_path / "nope.json"))


def test_replay_from_python_matches_the_cli_figures():
    r = eplb.replay(TRACE, ranks=4, redundant=4, batch_steps=16,
                    verify_outputs=True)
    assert r["steps"] == 63 and r["rebalances"] >= 1
    assert r["outputs_mismatched"] == 0 and r["outputs_verified"] > 0
    assert r["imbalance"]["median"] < r["baseline_imbalance"]["median"]
    trace = np.random.default_rng(1).poisson(3.0, size=(40, 2, 8)).astype(float)
    small = eplb.replay(trace, ranks=2, redundant=2, heat_interval=4)
    assert small["steps"] == 40 and small["experts"] == 8
    with pytest.raises(eplb.EplbError, match="redundant"):
        eplb.replay(trace, ranks=3, redundant=2)


def test_plan_from_a_load_and_a_trace():
    rng = np.random.default_rng(7)
    load = rng.gamma(0.5, 100.0, size=(3, 16))
    placement, report = eplb.plan(load, 4, 5, policy="flashlb")
    assert placement.shape == (3, 4, 5) and placement.dtype == np.int32
    assert eplb.validate_map(placement, 16) == []
    assert all(p <= c + 1e-12 for p, c in zip(report["predicted_imbalance"],
                                              report["current_imbalance"]))
    assert report["policy"] == "flashlb" and len(report["choice"]) == 3
    trace = rng.poisson(5.0, size=(12, 3, 16)).astype(float)
    again, rep2 = eplb.plan(trace, 4, 5, current=placement, window=8,
                            migration_budget=0.1)
    assert sum(rep2["moved_experts"]) <= 0.1 * 3 * 4 * 5 + 1e-9
    with pytest.raises(eplb.EplbError, match="migration_budget"):
        eplb.plan(load, 4, 5, migration_budget=0.0)
    with pytest.raises(eplb.EplbError, match="current"):
        eplb.plan(load, 4, 5, current=np.zeros((3, 4, 5), np.int32))
