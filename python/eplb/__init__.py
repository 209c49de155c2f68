"""eplb: expert-parallel load balancing for MoE inference, from Python.

The C++ library does the work (eplb._eplb); this package only converts
between numpy arrays, CPU torch tensors and the library's types.

    phy2log, log2phy, logcnt = eplb.rebalance_experts(
        weight, num_replicas, num_groups, num_nodes, num_gpus,
        policy="default", current=None)

DeepSeek's signature, shapes, dtypes (int64) and meaning: torch in, torch
out; numpy in, numpy out. `weight` is [layers, experts] (any real dtype);
phy2log [layers, num_replicas] gives each physical expert's logical id
(physical p = rank * (num_replicas // num_gpus) + slot); log2phy
[layers, experts, num_replicas - experts + 1] each expert's physical ids,
ascending, -1 padded; logcnt [layers, experts] its replica count.
`policy`: "default" (DeepSeek's algorithm), "swift", "flashlb", "best",
"random" or 0-3. `current`: the phy2log serving now, from which the
incremental policies move as little as they can. Unlike DeepSeek's
reference, no two replicas of an expert are placed on one rank.

Also bound (numpy arrays or CPU torch tensors in; the GIL released while
C++ works):
  HeatRecorder(num_layers, num_experts, num_slots, ring_steps=64,
               stage="all", max_num_reqs=256): record_topk(layer, topk_ids,
               log2phy), record_slot_counts(layer, counts), end_step(tokens),
               snapshot() -> {"window", "samples", "steps_counted", ...}
  BalancedDispatcher(num_experts, num_ranks, slots_per_rank):
               set_placement(phy2log_row), compute_quotas(counts) ->
               (quota per slot, busiest rank's load),
               map_tokens(topk_ids, offsets=None)
  global_counts_and_offsets(rank_counts, rank) -> (counts, offsets): from
               every rank's tokens per expert [ranks, experts] (e.g. an
               all-gather), the summed counts for compute_quotas and this
               rank's offsets for map_tokens, so that ranks mapping only
               their own tokens honour the quotas together
  parse_config(json_text) -> dict (the eplb_config, validated; the
               DYNAMIC_EPLB / EXPERT_MAP_RECORD guard read from os.environ)
  read_expert_map(path) / write_expert_map(path, placement, num_experts) /
  validate_map(placement, num_experts): vllm-ascend expert maps as
               [layers, ranks, slots_per_rank] int32 arrays
  plan(load, num_ranks, slots_per_rank, policy="swift", current=None,
       num_groups=1, ranks_per_node=0, dispatch="rr", migration_budget=1.0,
       window=0) -> (placement [layers, ranks, slots] int32, report dict):
               `eplb plan` on a [layers, experts] load or a [steps, layers,
               experts] trace (per-step samples for swift and flashlb)
  replay(trace, ranks=..., redundant=..., policy=..., ...) -> dict, the
               same figures as `eplb replay --json` (lockstep simulation)

Errors raise eplb.EplbError (a ValueError) with the library's one-line
message naming the argument and its value.
"""

import numpy as _np

import json as _json

from ._eplb import (EplbError, parse_config, read_expert_map, validate_map,
                    write_expert_map)
from . import _eplb

__all__ = ["BalancedDispatcher", "EplbError", "HeatRecorder",
           "global_counts_and_offsets", "parse_config",
           "plan", "read_expert_map", "rebalance_experts", "replay",
           "validate_map",
           "write_expert_map"]


def _torch_tensor(x):
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


def _as_numpy(x, dtype, what):
    if _torch_tensor(x):
        t = x.detach()
        if t.device.type != "cpu":
            raise EplbError(f"{what}: a tensor on {t.device}; pass a CPU tensor")
        return t.numpy().astype(dtype, copy=False)
    try:
        return _np.ascontiguousarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise EplbError(f"{what}: not an array of numbers ({e})") from None


def _as_whole(x, what, dtype=_np.int64):
    """Whole numbers as `dtype`; fractional, infinite or NaN entries, and
    entries that `dtype` cannot hold, raise."""
    a = _np.asarray(_view(x, what))
    if a.dtype.kind in "fc":
        bad = ~_np.isfinite(a) | (a != _np.round(a))
        if bad.any():
            at = tuple(int(i) for i in _np.argwhere(bad)[0])
            raise EplbError(f"{what}{list(at)} = {a[at]}: must be a whole "
                            "number")
    elif a.dtype.kind not in "iub":
        raise EplbError(f"{what}: not an array of numbers (dtype {a.dtype})")
    info = _np.iinfo(dtype)
    if a.size and (a.min() < info.min or a.max() > info.max):
        bad = (a < info.min) | (a > info.max)
        at = tuple(int(i) for i in _np.argwhere(bad)[0])
        raise EplbError(f"{what}{list(at)} = {a[at]}: out of {_np.dtype(dtype)}"
                        " range")
    return _np.ascontiguousarray(a, dtype=dtype)


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus,
                      *, policy="default", current=None):
    """See the module's documentation."""
    as_torch = _torch_tensor(weight)
    w = _as_numpy(weight, _np.float64, "weight")
    cur = None if current is None else _as_whole(current, "current")
    out = _eplb.rebalance_experts(w, int(num_replicas), int(num_groups),
                                  int(num_nodes), int(num_gpus), str(policy),
                                  cur)
    if as_torch:
        import torch
        return tuple(torch.from_numpy(a) for a in out)
    return out


def replay(trace, **options):
    """Replays `trace` (a trace CSV / SGLang dump path, or a [steps, layers,
    experts] array) in lockstep; returns `eplb replay --json`'s figures."""
    if not isinstance(trace, str):
        trace = _as_numpy(trace, _np.float64, "trace")
    return _json.loads(_eplb.replay(trace, **options))


def _view(x, what):
    """A CPU torch tensor as a numpy view of its memory (no copy)."""
    if _torch_tensor(x):
        t = x.detach()
        if t.device.type != "cpu":
            raise EplbError(f"{what}: a tensor on {t.device}; pass a CPU tensor")
        return t.contiguous().numpy()
    return x


class HeatRecorder(_eplb.HeatRecorder):
    __doc__ = _eplb.HeatRecorder.__doc__

    def record_topk(self, layer, topk_ids, log2phy):
        super().record_topk(layer, _view(topk_ids, "topk_ids"),
                            _view(log2phy, "log2phy"))

    def record_slot_counts(self, layer, slot_counts):
        super().record_slot_counts(layer, _view(slot_counts, "slot_counts"))


class BalancedDispatcher(_eplb.BalancedDispatcher):
    __doc__ = _eplb.BalancedDispatcher.__doc__

    def set_placement(self, placement):
        super().set_placement(_view(placement, "placement"))

    def compute_quotas(self, counts):
        as_torch = _torch_tensor(counts)
        quota, peak = super().compute_quotas(_as_whole(counts, "counts"))
        if as_torch:
            import torch
            quota = torch.from_numpy(quota)
        return quota, peak

    def map_tokens(self, topk_ids, offsets=None):
        as_torch = _torch_tensor(topk_ids)
        if offsets is not None:
            offsets = _as_whole(offsets, "offsets")
        out = super().map_tokens(_view(topk_ids, "topk_ids"), offsets)
        if as_torch:
            import torch
            out = torch.from_numpy(out)
        return out


def global_counts_and_offsets(rank_counts, rank):
    """See the module's documentation."""
    as_torch = _torch_tensor(rank_counts)
    counts, offsets = _eplb.global_counts_and_offsets(
        _as_whole(rank_counts, "rank_counts"), int(rank))
    if as_torch:
        import torch
        return torch.from_numpy(counts), torch.from_numpy(offsets)
    return counts, offsets


def plan(load, num_ranks, slots_per_rank, *, policy="swift", current=None,
         **options):
    """See the module's documentation."""
    cur = None if current is None else _as_whole(current, "current", _np.int32)
    return _eplb.plan(_as_numpy(load, _np.float64, "load"), int(num_ranks),
                      int(slots_per_rank), str(policy), cur, **options)
