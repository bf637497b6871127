"""Placement: which GPU holds which expert.

A placement is computed once per run (or per rebalancing period), not per step, so it
is plain numpy. The default is contiguous: GPU g holds experts [g·E/G, (g+1)·E/G), the
layout Megatron-Core and vLLM use for expert parallelism. ``Placement`` keeps room for
replicated experts (EPLB): a logical expert may own several physical slots.
"""

from macssim.placement._placement import Placement, contiguous_placement

__all__ = ["Placement", "contiguous_placement"]
