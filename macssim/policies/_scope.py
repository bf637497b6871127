"""Where a capacity applies, and which experts a token may take beyond its top-k.

Capacity scope. CAI-MoE's deployed runs (DP attention + EP) apply the capacity on each
GPU to that GPU's own tokens, before the dispatch all-to-all, with T = the GPU's tokens
(``rank``, the default). Applying one capacity to all T tokens of the step (``global``)
needs what no single GPU has before dispatch: every GPU's per-expert demand and the
ranking keys of its candidates, i.e. an extra exchange, which the plan states in
``exchange_bytes`` so that the step model can charge it.

A capacity *bucket* is what one capacity bounds: expert e of layer b under ``global``;
expert e as seen from source GPU g of layer b under ``rank``. Bucket ids are
``(b·S + s)·E + e`` with S = 1 (``global``) or G (``rank``).
"""

from __future__ import annotations

from typing import Literal

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import gpu_expert_table

__all__ = ["SCOPES", "Scope", "Sources", "check_scope", "exchange_bytes", "local_candidates",
           "sources"]

Scope = Literal["rank", "global"]
SCOPES: tuple[str, ...] = ("rank", "global")

COUNT_BYTES = 4
"""One per-expert demand count (int32) in the global-scope exchange."""


def check_scope(scope: str, policy: str) -> None:
    if scope not in SCOPES:
        raise PolicyError(f'{policy}: "scope" must be one of {list(SCOPES)}, got {scope!r}')


class Sources:
    """The source (capacity) groups of a batch in row layout.

    Attributes:
        num_gpus: G. num_sources: S (1 for ``global``, G for ``rank``).
        token_gpu: [T] int64 GPU whose tokens each token is (where it is dispatched from).
        row_gpu: [R] int64 the same per row (R = B·T).
        row_source: [R] int64 (layer·S + source) of each row.
        tokens: [B, S] float64 tokens of each source group (T, or the GPU's own tokens).
    """

    def __init__(self, scope: str, token_gpu: torch.Tensor, num_gpus: int, num_layers: int,
                 num_tokens: int) -> None:
        self.scope = scope
        self.num_gpus = num_gpus
        self.num_layers = num_layers
        self.num_sources = num_gpus if scope == "rank" else 1
        self.token_gpu = token_gpu
        self.row_gpu = token_gpu.repeat(num_layers)
        layer = torch.arange(num_layers, device=token_gpu.device).repeat_interleave(num_tokens)
        token_source = token_gpu if scope == "rank" else torch.zeros_like(token_gpu)
        self.token_source = token_source
        self.row_source = layer * self.num_sources + token_source.repeat(num_layers)
        self.tokens = torch.bincount(token_source, minlength=self.num_sources).double().expand(
            num_layers, -1)

    def bucket(self, rows: torch.Tensor, experts: torch.Tensor, num_experts: int) -> torch.Tensor:
        """Bucket id of candidates (row, expert)."""
        return self.row_source[rows] * num_experts + experts


def sources(scope: str, token_gpu: torch.Tensor | None, placement: torch.Tensor | None,
            num_layers: int, num_tokens: int, policy: str) -> Sources:
    """Check ``token_gpu`` ([T] int, the GPU each token is dispatched from) and group
    the rows by capacity source."""
    check_scope(scope, policy)
    if token_gpu is None:
        raise PolicyError(f'{policy}: needs "token_gpu" ([T] = [{num_tokens}], the GPU each '
                          "token is dispatched from) to apply capacity per source GPU "
                          "(scope rank) or to count the global-scope exchange")
    if tuple(token_gpu.shape) != (num_tokens,) or token_gpu.dtype.is_floating_point:
        raise PolicyError(f'{policy}: "token_gpu" must be [T] = [{num_tokens}] integers, got '
                          f"{list(token_gpu.shape)} {token_gpu.dtype}")
    token_gpu = token_gpu.long()
    if num_tokens and int(token_gpu.min()) < 0:
        raise PolicyError(f'{policy}: "token_gpu" must be >= 0, got {int(token_gpu.min())}')
    num_gpus = max(int(token_gpu.max()) + 1 if num_tokens else 1,
                   int(placement.max()) + 1 if placement is not None else 1)
    return Sources(scope, token_gpu, num_gpus, num_layers, num_tokens)


def local_candidates(ids: torch.Tensor, scores: torch.Tensor, src: Sources,
                     expert_gpu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CAI-MoE Expanded Drop's candidates: each token's top-k plus every expert on the
    token's own GPU (experts reached there cost no communication). An added expert must
    not be one of the token's top-k (duplicates removed, as the reference does) and must
    have a positive router score (a zero score means the router excludes it, e.g.
    ERNIE-4.5-VL's disjoint text and vision experts).

    Args:
        ids: [R, k] the router's choice; scores: [R, E].
    Returns:
        (candidate ids [R, k + M], candidate mask [R, k + M]); columns k.. are the
        token's GPU's experts in ascending id order (-1 where a GPU has fewer than M).
    """
    table = gpu_expert_table(expert_gpu, src.num_gpus)                    # [G, M]
    local = table[src.row_gpu]                                              # [R, M]
    real = local >= 0
    score = torch.gather(scores, 1, local.clamp(min=0))
    in_topk = (local.unsqueeze(2) == ids.unsqueeze(1)).any(dim=2)
    extra = real & ~in_topk & (score > 0)
    cand_ids = torch.cat([ids, local], dim=1)
    mask = torch.cat([torch.ones_like(ids, dtype=torch.bool), extra], dim=1)
    return cand_ids, mask


def exchange_bytes(src: Sources, rows: torch.Tensor, experts: torch.Tensor,
                   capacity: torch.Tensor, num_experts: int, key_bytes: int,
                   stats_bytes: int = 0) -> torch.Tensor | None:
    """Bytes each GPU must all-gather to every other GPU before dispatch so that every
    GPU can apply one global capacity exactly: its per-expert demand counts (E × 4 B),
    plus the ranking keys of its candidates that could be admitted (at most C per
    expert, ``key_bytes`` each: 4 for a score, 8 for MACS's weight and score), plus
    ``stats_bytes`` of batch statistics (MACS: visual-token count, Σ H, Σ H², Σ_visual w,
    Σ w, all-reduced before the weights exist). None under ``rank`` scope: nothing to
    exchange.

    Args:
        rows, experts: [N] the candidates; capacity: [B, E] float64.
    Returns:
        [B, G] int64 bytes, or None.
    """
    if src.scope == "rank":
        return None
    num_layers, num_gpus = src.num_layers, src.num_gpus
    layer = rows // src.token_gpu.shape[0] if src.token_gpu.shape[0] else rows
    key = (layer * num_gpus + src.row_gpu[rows]) * num_experts + experts
    demand = torch.bincount(key, minlength=num_layers * num_gpus * num_experts).view(
        num_layers, num_gpus, num_experts)
    room = torch.ceil(capacity).long().unsqueeze(1)                         # [B, 1, E]
    keys = torch.minimum(demand, room).sum(dim=2)
    return COUNT_BYTES * num_experts + stats_bytes + key_bytes * keys
