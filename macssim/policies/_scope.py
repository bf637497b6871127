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

Local experts. "The token's GPU's experts" are every expert with a replica there: with
a replicated placement (EPLB) an expert may sit on several GPUs, and the cluster sends a
token to the replica on its own GPU when there is one (``ExpertMap.route``), so such an
expert costs no transfer from any of those GPUs. ``local_expert_table`` builds that table
from the placement's slots; without one, the table is each expert's single GPU.
"""

from __future__ import annotations

from typing import Literal

import torch

from macssim._errors import PolicyError
from macssim.policies._capacity import (
    admit_by_priority,
    desc31,
    gpu_expert_table,
    use_compiled,
)

__all__ = ["SCOPES", "Scope", "Sources", "admit_local_candidates", "check_scope", "exchange_bytes",
           "local_candidates", "local_expert_table", "local_expert_tables", "sources"]

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
                 num_tokens: int, local_experts: torch.Tensor | None = None) -> None:
        self.scope = scope
        self.local_experts = local_experts
        """[G, M] (or [B, G, M], one per layer) experts with a replica on each GPU (-1
        padded), or None: each expert's GPU in ``placement`` is its only one."""
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


def local_expert_table(slot_expert, slot_gpu, num_gpus: int, width: int = 0) -> torch.Tensor:
    """[G, M] the distinct experts with a replica on each GPU, ascending, -1 padded (M =
    most distinct experts on a GPU, at least ``width``), from a placement's slots ([S]
    expert, [S] GPU)."""
    slot_expert = torch.as_tensor(slot_expert).long()
    slot_gpu = torch.as_tensor(slot_gpu).long()
    num_experts = int(slot_expert.max()) + 1 if slot_expert.numel() else 0
    key = torch.unique(slot_gpu * num_experts + slot_expert)      # sorted: by GPU, then expert
    gpu, expert = key // max(num_experts, 1), key % max(num_experts, 1)
    counts = torch.bincount(gpu, minlength=num_gpus)
    width = max(int(counts.max()) if counts.numel() else 0, 1, width)
    col = torch.arange(key.shape[0]) - (torch.cumsum(counts, 0) - counts)[gpu]
    table = torch.full((num_gpus, width), -1, dtype=torch.long)
    table[gpu, col] = expert
    return table


def local_expert_tables(placements) -> torch.Tensor:
    """[B, G, M] ``local_expert_table`` of each layer's placement (each has
    ``slot_expert``, ``slot_gpu`` and ``num_gpus``), padded to one width."""
    tables = [local_expert_table(p.slot_expert, p.slot_gpu, p.num_gpus) for p in placements]
    width = max(t.shape[1] for t in tables)
    return torch.stack([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1)
                        for t in tables])


def sources(scope: str, token_gpu: torch.Tensor | None, placement: torch.Tensor | None,
            num_layers: int, num_tokens: int, policy: str,
            local_experts: torch.Tensor | None = None) -> Sources:
    """Check ``token_gpu`` ([T] int, the GPU each token is dispatched from) and group
    the rows by capacity source. ``local_experts`` ([G, M], ``local_expert_table``) names
    every GPU's experts when the placement replicates some (None: ``placement``'s)."""
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
    if local_experts is not None:
        shape = tuple(local_experts.shape)
        if (len(shape) not in (2, 3) or local_experts.dtype.is_floating_point
                or shape[-2] < num_gpus or (len(shape) == 3 and shape[0] != num_layers)):
            raise PolicyError(f'{policy}: "local_experts" must be [G, M] (or [B, G, M] with B = '
                              f"{num_layers} layers) integers with a row for each of the "
                              f"{num_gpus} GPUs, got {list(shape)} {local_experts.dtype}")
        local_experts = local_experts.long().to(token_gpu.device)
        num_gpus = shape[-2]
    return Sources(scope, token_gpu, num_gpus, num_layers, num_tokens, local_experts)


def local_candidates(ids: torch.Tensor, scores: torch.Tensor, src: Sources,
                     expert_gpu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CAI-MoE Expanded Drop's candidates: each token's top-k plus every expert on the
    token's own GPU (experts reached there cost no communication; with replicas, every
    expert with a replica there, ``src.local_experts``). An added expert must
    not be one of the token's top-k (duplicates removed, as the reference does) and must
    have a positive router score (a zero score means the router excludes it, e.g.
    ERNIE-4.5-VL's disjoint text and vision experts).

    Args:
        ids: [R, k] the router's choice; scores: [R, E].
    Returns:
        (candidate ids [R, k + M], candidate mask [R, k + M]); columns k.. are the
        token's GPU's experts in ascending id order (-1 where a GPU has fewer than M).
    """
    table = (src.local_experts if src.local_experts is not None
             else gpu_expert_table(expert_gpu, src.num_gpus))               # [(B,) G, M]
    if table.dim() == 3:   # one table per layer: rows are layer-major, T per layer
        row_layer = torch.arange(src.row_gpu.shape[0], device=table.device) // max(
            src.token_gpu.shape[0], 1)
        local = table[row_layer, src.row_gpu]                               # [R, M]
    else:
        local = table[src.row_gpu]                                          # [R, M]
    real = local >= 0
    score = torch.gather(scores, 1, local.clamp(min=0))
    in_topk = (local.unsqueeze(2) == ids.unsqueeze(1)).any(dim=2)
    extra = real & ~in_topk & (score > 0)
    cand_ids = torch.cat([ids, local], dim=1)
    mask = torch.cat([torch.ones_like(ids, dtype=torch.bool), extra], dim=1)
    return cand_ids, mask


def admit_local_candidates(b, src: Sources, expert_gpu: torch.Tensor, capacity: torch.Tensor,
                           row_weight: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expanded Drop's footing: ``local_candidates``, then each capacity bucket admits its
    candidates in priority order, each one that still fits (``admit_by_priority``).
    Without ``row_weight`` every candidate counts 1 and ranks by router score (Expanded
    Drop); with it ([R], MACS's w(x)) a candidate counts its row's weight and ranks by
    that weight, heaviest first, then by score.

    On the CPU both steps run as one compiled pass (``_first_fit.admit_local_cpu``).

    Args:
        b: the layers in row layout (``LayerBatch``); capacity: [NB] float64 per bucket.
    Returns:
        (candidate ids [R, k + M], candidate mask [R, k + M], kept [R, k + M]).
    """
    if use_compiled(b.scores):
        from macssim.policies._first_fit import admit_local_cpu

        table = (src.local_experts if src.local_experts is not None
                 else gpu_expert_table(expert_gpu, src.num_gpus))
        num_rows = b.ids.shape[0]
        if row_weight is None:
            size = torch.ones(num_rows, dtype=torch.float64)
            row_key = torch.zeros(num_rows, dtype=torch.long)
            row_order = torch.arange(num_rows)
        else:
            size = row_weight.double()
            row_key = desc31(row_weight)
            row_order = torch.sort(row_key, stable=True).indices
        return admit_local_cpu(b.ids, b.scores, table.reshape(-1, *table.shape[-2:]),
                               src.row_gpu, src.row_source, src.token_gpu.shape[0], size,
                               capacity + 1e-9 * torch.clamp(capacity, min=1.0), row_order,
                               row_key)
    cand_ids, cand = local_candidates(b.ids, b.scores, src, expert_gpu)
    rows, cols = torch.nonzero(cand, as_tuple=True)
    experts = cand_ids[rows, cols]
    bucket = src.bucket(rows, experts, b.num_experts)
    score = b.scores[rows, experts]
    if row_weight is None:
        admitted = admit_by_priority(bucket, torch.ones(rows.shape[0], dtype=torch.float64,
                                                        device=rows.device), capacity, [score])
    else:
        w = row_weight[rows]
        admitted = admit_by_priority(bucket, w.double(), capacity, [w, score])
    kept = torch.zeros_like(cand)
    kept[rows[admitted], cols[admitted]] = True
    return cand_ids, cand, kept


def exchange_bytes(src: Sources, cand_ids: torch.Tensor, cand: torch.Tensor | None,
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
        cand_ids: [R, C] candidate experts, ``cand`` [R, C] which are candidates (None:
            all); capacity: [B, E] float64.
    Returns:
        [B, G] int64 bytes, or None.
    """
    if src.scope == "rank":
        return None
    if cand is None:
        cand = torch.ones_like(cand_ids, dtype=torch.bool)
    rows, cols = torch.nonzero(cand, as_tuple=True)
    experts = cand_ids[rows, cols]
    num_layers, num_gpus = src.num_layers, src.num_gpus
    layer = rows // src.token_gpu.shape[0] if src.token_gpu.shape[0] else rows
    key = (layer * num_gpus + src.row_gpu[rows]) * num_experts + experts
    demand = torch.bincount(key, minlength=num_layers * num_gpus * num_experts).view(
        num_layers, num_gpus, num_experts)
    room = torch.ceil(capacity).long().unsqueeze(1)                         # [B, 1, E]
    keys = torch.minimum(demand, room).sum(dim=2)
    return COUNT_BYTES * num_experts + stats_bytes + key_bytes * keys
