"""CAI-MoE Expanded Drop (arXiv 2503.05066, Algorithm 2; the ``overselect`` strategy of
its code): a token's candidates are its top-k experts plus every expert on the token's
own GPU, and each expert keeps the C highest-scoring of its candidates. An idle local
expert so fills up to C with the GPU's best-scoring tokens, not only with dropped ones,
and a token may end with more than k experts: that extra work never leaves the GPU."""

from __future__ import annotations

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import check_placement
from macssim.policies._common import finish_plan, layer_batch
from macssim.policies._plan import DispatchPlan
from macssim.policies._scope import admit_local_candidates, exchange_bytes, sources
from macssim.policies.token_drop import bucket_capacity, plan_capacity

__all__ = ["expanded_drop"]


def expanded_drop(scores: torch.Tensor, *, top_k: int, placement: torch.Tensor,
                  capacity_factor: float = 1.0, scope: str = "rank",
                  token_gpu: torch.Tensor | None = None, modality: torch.Tensor | None = None,
                  entropy: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
                  topk_weights: torch.Tensor | None = None, scores_known: bool = True,
                  local_experts: torch.Tensor | None = None, **_unused) -> DispatchPlan:
    """Expanded Drop on one MoE layer's batch ([T, E]) or B layers at once ([B, T, E]).

    Args:
        scores: router probabilities; top_k: k; capacity_factor: γ > 0.
        placement: [E] int64 expert -> GPU; token_gpu: [T] GPU each token is dispatched
            from; scope: ``rank`` or ``global`` (where C applies, and to which T).
        local_experts: [G, M] every GPU's experts, replicas included (None: placement's).
        modality, entropy: only to report what was dropped.
    """
    if not capacity_factor > 0:
        raise PolicyError(f'expanded-drop: "capacity_factor" must be > 0, got '
                          f"{capacity_factor!r}")
    b = layer_batch(scores, top_k, modality=modality, entropy=entropy, topk_ids=topk_ids,
                    topk_weights=topk_weights, policy="expanded-drop", scores_known=scores_known)
    check_placement(placement, b.num_experts, "expanded-drop")
    src = sources(scope, token_gpu, placement, b.num_layers, b.num_tokens, "expanded-drop",
                  local_experts)
    cap = bucket_capacity(src, top_k, b.num_experts, capacity_factor)
    cand_ids, cand, kept = admit_local_candidates(b, src, placement.long().to(b.ids.device),
                                                  cap.reshape(-1))
    added = kept.clone()
    added[:, :top_k] = False
    exchange = exchange_bytes(src, cand_ids, cand, cap[:, 0], b.num_experts, key_bytes=4)
    return finish_plan(b, cand_ids, kept, added, plan_capacity(cap, scope),
                       torch.ones(b.num_layers, b.num_tokens, device=kept.device), exchange)
