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

Errors raise eplb.EplbError (a ValueError) with the library's one-line
message naming the argument and its value.
"""

import numpy as _np

from ._eplb import EplbError
from . import _eplb

__all__ = ["EplbError", "rebalance_experts"]


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


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus,
                      *, policy="default", current=None):
    """See the module's documentation."""
    as_torch = _torch_tensor(weight)
    w = _as_numpy(weight, _np.float64, "weight")
    cur = None if current is None else _as_numpy(current, _np.int64, "current")
    out = _eplb.rebalance_experts(w, int(num_replicas), int(num_groups),
                                  int(num_nodes), int(num_gpus), str(policy),
                                  cur)
    if as_torch:
        import torch
        return tuple(torch.from_numpy(a) for a in out)
    return out
