"""What a trace holds, in the numbers a capacity planner asks for first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from macssim.trace._format import MODALITIES, Trace

__all__ = ["TraceSummary", "summarize_trace"]


@dataclass(frozen=True)
class TraceSummary:
    path: str
    model: str
    num_steps: int
    prefill_steps: int
    decode_steps: int
    tokens_by_modality: dict[str, int]
    fields: tuple[str, ...]
    expert_imbalance: np.ndarray
    """[L] max / mean over experts of the layer's assignments, summed over all steps."""
    provenance: dict
    size_bytes: int

    @property
    def num_tokens(self) -> int:
        return sum(self.tokens_by_modality.values())


def summarize_trace(trace: Trace) -> TraceSummary:
    """Reads every step once (and so validates the whole file)."""
    model = trace.model
    load = np.zeros((model.num_moe_layers, model.num_experts), dtype=np.int64)
    tokens = np.zeros(len(MODALITIES), dtype=np.int64)
    kinds = {"prefill": 0, "decode": 0}
    for step in trace:
        kinds[step.kind] += 1
        tokens += np.bincount(step.modality, minlength=len(MODALITIES))
        for layer in range(model.num_moe_layers):
            load[layer] += np.bincount(step.topk_ids[layer].ravel(), minlength=model.num_experts)
    mean = load.mean(axis=1)
    imbalance = np.divide(load.max(axis=1), mean, out=np.zeros_like(mean), where=mean > 0)
    return TraceSummary(
        path=str(trace.path), model=model.name, num_steps=trace.num_steps,
        prefill_steps=kinds["prefill"], decode_steps=kinds["decode"],
        tokens_by_modality={m: int(c) for m, c in zip(MODALITIES, tokens, strict=True) if c},
        fields=trace.fields, expert_imbalance=imbalance, provenance=trace.provenance,
        size_bytes=trace.path.stat().st_size)
