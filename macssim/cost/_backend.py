"""One object the step model asks for every compute cost: a *cost model* (backend).

The step composes operations (attention, dense MLP, vision encoder, routed and shared
experts, output head) into a GPU's phases; which numbers those operations take is the cost
model's business. ``ROOFLINE`` answers from FLOPs and bytes (``_roofline``); a measured
backend answers from tables where they cover the shape and from the roofline elsewhere,
and says which it did (``coverage``), so a run's record states where its numbers came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from macssim.cost import _roofline
from macssim.cost._precision import Precision
from macssim.hardware import GpuSpec
from macssim.trace import ModelFacts

__all__ = ["ROOFLINE", "CostModel", "Roofline"]


class CostModel(Protocol):
    """Per-GPU compute costs of one step's operations, each [G] seconds.

    Argument meanings are those of the roofline functions of the same names
    (``macssim.cost.attention_s`` …)."""

    name: str

    def attention_s(self, model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray,
                    kv_read: np.ndarray, context_sum: np.ndarray,
                    precision: Precision) -> np.ndarray: ...

    def dense_mlp_s(self, model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray,
                    precision: Precision) -> np.ndarray: ...

    def vision_s(self, model: ModelFacts, gpu: GpuSpec, vision_tokens: np.ndarray
                 ) -> np.ndarray: ...

    def head_s(self, model: ModelFacts, gpu: GpuSpec, requests: np.ndarray,
               precision: Precision) -> np.ndarray: ...

    def expert_phase_s(self, model: ModelFacts, gpu: GpuSpec, tokens_per_expert: np.ndarray,
                       precision: Precision) -> np.ndarray: ...

    def shared_experts_s(self, model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray,
                         precision: Precision) -> np.ndarray: ...

    def gemm_s(self, gpu: GpuSpec, m: np.ndarray, n: int, k: int, dtype: str = "bf16"
               ) -> np.ndarray: ...

    def coverage(self) -> dict[str, Any]:
        """What answered so far, for the run's record (``run.json``)."""
        ...


@dataclass(frozen=True)
class Roofline:
    """The calibrated roofline for every operation (``_roofline``)."""

    name: str = "roofline"

    def attention_s(self, model, gpu, tokens, kv_read, context_sum, precision):
        return _roofline.attention_s(model, gpu, tokens, kv_read, context_sum, precision)

    def dense_mlp_s(self, model, gpu, tokens, precision):
        return _roofline.dense_mlp_s(model, gpu, tokens, precision)

    def vision_s(self, model, gpu, vision_tokens):
        return _roofline.vision_s(model, gpu, vision_tokens)

    def head_s(self, model, gpu, requests, precision):
        return _roofline.head_s(model, gpu, requests, precision)

    def expert_phase_s(self, model, gpu, tokens_per_expert, precision):
        return _roofline.expert_phase_s(model, gpu, tokens_per_expert, precision=precision)

    def shared_experts_s(self, model, gpu, tokens, precision):
        return _roofline.shared_experts_s(model, gpu, tokens, precision)

    def gemm_s(self, gpu, m, n, k, dtype="bf16"):
        return _roofline.gemm_s(gpu, m, n, k, dtype)

    def coverage(self) -> dict[str, Any]:
        return {"backend": self.name, "tables": None}


ROOFLINE = Roofline()
"""The default cost model."""
