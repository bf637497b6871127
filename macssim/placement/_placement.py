from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from macssim._errors import TopologyError

__all__ = ["PLACEMENTS", "Placement", "contiguous_placement"]

PLACEMENTS: tuple[str, ...] = ("contiguous", "eplb")
"""Placement kinds ``macssim replay --placement`` takes."""


@dataclass(frozen=True)
class Placement:
    """Expert -> GPU map for one MoE layer (the same for every layer unless a caller
    builds one per layer).

    ``slot_expert[s]`` and ``slot_gpu[s]`` describe physical slot ``s``: which logical
    expert it serves and on which GPU it sits. Without replication there is one slot per
    expert and ``slot_expert`` is ``arange(E)``. ``expert_to_gpu`` is the primary GPU of
    each expert: the one a rerouting policy treats as "the same GPU".
    """

    num_gpus: int
    slot_expert: np.ndarray
    """[S] int64: logical expert of each physical slot."""
    slot_gpu: np.ndarray
    """[S] int64: GPU of each physical slot."""

    def __post_init__(self) -> None:
        if self.num_gpus <= 0:
            raise TopologyError(f'placement: "num_gpus" must be > 0, got {self.num_gpus}')
        if self.slot_expert.shape != self.slot_gpu.shape or self.slot_expert.ndim != 1:
            raise TopologyError("placement: slot_expert and slot_gpu must be 1-D and equal "
                                f"length, got {self.slot_expert.shape} and {self.slot_gpu.shape}")
        if self.slot_gpu.size and (self.slot_gpu.min() < 0 or self.slot_gpu.max() >= self.num_gpus):
            bad = int(self.slot_gpu[(self.slot_gpu < 0) | (self.slot_gpu >= self.num_gpus)][0])
            raise TopologyError(f"placement names GPU {bad}, but the topology has GPUs "
                                f"0..{self.num_gpus - 1}")
        experts = np.unique(self.slot_expert)
        if experts.size and (experts[0] != 0 or experts[-1] != experts.size - 1):
            raise TopologyError("placement: every expert 0..E-1 needs at least one slot")

    @property
    def num_experts(self) -> int:
        return int(self.slot_expert.max()) + 1 if self.slot_expert.size else 0

    @property
    def expert_to_gpu(self) -> np.ndarray:
        """[E] int64: GPU of each expert's first slot."""
        out = np.full(self.num_experts, -1, dtype=np.int64)
        # Reverse so the first slot of an expert wins the assignment.
        out[self.slot_expert[::-1]] = self.slot_gpu[::-1]
        return out

    @property
    def is_replicated(self) -> bool:
        return self.slot_expert.size > self.num_experts


def contiguous_placement(num_experts: int, num_gpus: int) -> Placement:
    """GPU g holds experts [g·E/G, (g+1)·E/G). When G does not divide E the first E mod G
    GPUs hold one expert more. When there are more GPUs than experts, the spare GPUs hold
    none (they still run attention)."""
    if num_experts <= 0 or num_gpus <= 0:
        raise TopologyError(f"placement: need > 0 experts and GPUs, got {num_experts} "
                            f"experts on {num_gpus} GPUs")
    used = min(num_gpus, num_experts)
    per_gpu = np.full(used, num_experts // used, dtype=np.int64)
    per_gpu[: num_experts % used] += 1
    gpu = np.repeat(np.arange(used, dtype=np.int64), per_gpu)
    return Placement(num_gpus=num_gpus, slot_expert=np.arange(num_experts, dtype=np.int64),
                     slot_gpu=gpu)
