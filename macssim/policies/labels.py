"""Expert modality labels for MACS step 2: which experts the visual tokens favour.

Labels are computed once, from how often each modality activates each expert on a
calibration trace. An expert's visual share is its per-token activation frequency among
visual tokens over the sum of its frequencies among visual and text tokens:

    r_j = f_v(j) / (f_v(j) + f_t(j)),  f_m(j) = assignments of modality m to j / tokens of m

r_j is 0.5 for an expert that both modalities use alike, whatever the batch's mix.
m_j = +1 (visual) when r_j >= 0.5 + τ, −1 (text) when r_j <= 0.5 − τ, else 0 (shared).
"""

from __future__ import annotations

import numpy as np
import torch

from macssim._errors import PolicyError
from macssim.policies._common import visual_mask

__all__ = ["ExpertLabelCounter", "calibrate_expert_labels", "expert_labels_from_trace"]


class ExpertLabelCounter:
    """Accumulates per-layer activation counts by modality, one step at a time (so a
    calibration trace of any length streams)."""

    def __init__(self, num_layers: int, num_experts: int) -> None:
        self.visual = np.zeros((num_layers, num_experts), dtype=np.int64)
        self.text = np.zeros((num_layers, num_experts), dtype=np.int64)
        self.visual_tokens = 0
        self.text_tokens = 0

    def add(self, topk_ids: np.ndarray, modality: np.ndarray) -> None:
        """topk_ids: [L, T, k]; modality: [T]."""
        vis = visual_mask(torch.as_tensor(modality)).numpy()
        txt = ~vis
        num_layers, _, _ = topk_ids.shape
        num_experts = self.visual.shape[1]
        for layer in range(num_layers):
            self.visual[layer] += np.bincount(topk_ids[layer][vis].ravel(), minlength=num_experts)
            self.text[layer] += np.bincount(topk_ids[layer][txt].ravel(), minlength=num_experts)
        self.visual_tokens += int(vis.sum())
        self.text_tokens += int(txt.sum())

    def labels(self, threshold: float = 0.1) -> np.ndarray:
        return calibrate_expert_labels(self.visual, self.text, self.visual_tokens,
                                       self.text_tokens, threshold)


def calibrate_expert_labels(visual_counts: np.ndarray, text_counts: np.ndarray,
                            visual_tokens: int, text_tokens: int,
                            threshold: float = 0.1) -> np.ndarray:
    """[L, E] int8 labels in {+1, 0, −1} from activation counts [L, E] per modality.

    With no visual or no text tokens there is nothing to compare: every label is 0.
    """
    if not 0 <= threshold < 0.5:
        raise PolicyError(f'expert labels: "threshold" must be in [0, 0.5), got {threshold!r}')
    labels = np.zeros(visual_counts.shape, dtype=np.int8)
    if visual_tokens == 0 or text_tokens == 0:
        return labels
    f_v = visual_counts / visual_tokens
    f_t = text_counts / text_tokens
    total = f_v + f_t
    share = np.divide(f_v, total, out=np.full_like(f_v, 0.5, dtype=np.float64),
                      where=total > 0)
    labels[share >= 0.5 + threshold] = 1
    labels[share <= 0.5 - threshold] = -1
    return labels


def expert_labels_from_trace(trace, threshold: float = 0.1,
                             max_steps: int | None = None) -> np.ndarray:
    """Labels [L, E] from a trace (``macssim.trace.Trace``), reading up to ``max_steps``
    steps one at a time."""
    counter = ExpertLabelCounter(trace.model.num_moe_layers, trace.model.num_experts)
    for i, (topk_ids, modality) in enumerate(trace.expert_choices()):
        if max_steps is not None and i >= max_steps:
            break
        counter.add(topk_ids, modality)
    return counter.labels(threshold)
