"""Placement: which GPU holds which expert.

A placement is computed once per run (or per rebalancing period), not per step, so it
is plain numpy. The default is contiguous: GPU g holds experts [g·E/G, (g+1)·E/G), the
layout Megatron-Core and vLLM use for expert parallelism. ``Placement`` keeps room for
replicated experts: a logical expert may own several physical slots, which is what
``eplb_placement`` (DeepSeek's expert-parallel load balancer) builds from measured loads.
"""

from macssim.placement._eplb import (
    eplb_placement,
    expert_loads_from_trace,
    gpu_loads,
    imbalance,
    placements_from_trace,
)
from macssim.placement._placement import PLACEMENTS, Placement, contiguous_placement

__all__ = ["PLACEMENTS", "Placement", "contiguous_placement", "eplb_placement",
           "expert_loads_from_trace", "gpu_loads", "imbalance", "placements_from_trace"]
