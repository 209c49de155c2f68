"""eplb's policies behind vLLM's EPLB policy interface.

vLLM calls a policy class's classmethod

    rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks,
                      old_global_expert_indices=None)
        -> (physical_to_logical_map, logical_to_physical_map, expert_count)

(vllm/distributed/eplb/policy/abstract.py, AbstractEplbPolicy). The classes
here implement it on eplb's policies; when vLLM is importable they derive
from its AbstractEplbPolicy, so vLLM accepts them wherever it takes a
policy class. `old_global_expert_indices` (the phy2log serving now) lets the
incremental policies (swift, flashlb) move as few experts as they can.
Each call plans afresh from its arguments (no state kept between calls).
"""

from . import rebalance_experts as _rebalance

try:  # pragma: no cover - depends on the environment
    from vllm.distributed.eplb.policy.abstract import AbstractEplbPolicy as _Base
except ImportError:  # vLLM not installed: the same interface, standalone.
    _Base = object

__all__ = ["policy_class", "DefaultEplbPolicy", "SwiftEplbPolicy",
           "FlashLBEplbPolicy", "BestEplbPolicy"]


def policy_class(policy):
    """A vLLM policy class for the eplb policy named `policy`."""

    class _Policy(_Base):
        eplb_policy = policy

        @classmethod
        def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes,
                              num_ranks, old_global_expert_indices=None):
            return _rebalance(weight, num_replicas, num_groups, num_nodes,
                              num_ranks, policy=cls.eplb_policy,
                              current=old_global_expert_indices)

    _Policy.__name__ = _Policy.__qualname__ = f"Eplb_{policy}_Policy"
    return _Policy


DefaultEplbPolicy = policy_class("default")
SwiftEplbPolicy = policy_class("swift")
FlashLBEplbPolicy = policy_class("flashlb")
BestEplbPolicy = policy_class("best")
