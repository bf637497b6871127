"""Turning one forward call's router records into a format-v1 ``Step``.

Rows: every router sees the call's ``B x S`` positions flattened batch-major (ERNIE's two
routers each see their modality's subset, in order). A token is kept when its attention
mask is 1 and its sequence is still live; tokens come out batch-major with padding
removed. Position = (number of attended tokens up to and including it) - 1, so left and
right padding and decode steps all number tokens within their request from 0.

A sequence is finished, in a decode step, once the token it is fed is an end-of-sequence
token: a serving engine would have stopped it; ``generate`` keeps feeding it padding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from macssim._errors import CaptureError
from macssim.capture._sites import RouterSite
from macssim.trace import Step

__all__ = ["assemble_step", "past_length"]


def _call_shape(ctx: dict[str, Any]) -> tuple[int, int]:
    ids, embeds = ctx.get("input_ids"), ctx.get("inputs_embeds")
    if ids is not None:
        return int(ids.shape[0]), int(ids.shape[-1])
    if embeds is not None:
        return int(embeds.shape[0]), int(embeds.shape[1])
    raise CaptureError("forward call has neither input_ids nor inputs_embeds")


_CACHE_ARGS = ("cache", "past_key_values")
"""Names of the KV-cache argument: transformers 5.24 renamed ``past_key_values`` to
``cache`` (the old name still accepted through ``deprecate_kwarg`` until 5.40)."""


def _cache_of(ctx: dict[str, Any]) -> Any | None:
    """The call's KV cache: the argument of either name, else any argument that is a
    cache (has ``get_seq_length``), whatever the model's ``forward`` calls it."""
    for name in _CACHE_ARGS:
        value = ctx.get(name)
        if value is not None and hasattr(value, "get_seq_length"):
            return value
    for name, value in ctx.items():
        if not name.startswith("_") and hasattr(value, "get_seq_length") \
                and not isinstance(value, type):
            return value
    return None


def past_length(ctx: dict[str, Any]) -> int:
    """Tokens already in the KV cache when the call starts (0: a prefill)."""
    if "_past_length" in ctx:
        return int(ctx["_past_length"])
    past = _cache_of(ctx)
    if past is not None:
        return int(past.get_seq_length())
    cache_position = ctx.get("cache_position")
    if cache_position is not None and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    return 0


def _token_layout(ctx: dict[str, Any], batch: int, seq: int, device: Any) -> tuple[Any, Any]:
    """(valid [B, S] bool, position [B, S] int64) of the call's tokens."""
    import torch

    mask = ctx.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == batch \
            and mask.shape[1] >= seq:
        full = mask.to(device=device, dtype=torch.long)
        position = full.cumsum(dim=1)[:, -seq:] - 1
        return full[:, -seq:].bool(), position
    start = past_length(ctx)
    position = torch.arange(start, start + seq, device=device).expand(batch, seq)
    return torch.ones((batch, seq), dtype=torch.bool, device=device), position


def _modality(ctx: dict[str, Any], special: dict[int, int], batch: int, seq: int,
              device: Any) -> Any:
    """[B, S] uint8 modality codes: the model's own ``mm_token_type_ids`` (0 text, 1 image,
    2 video) when the call carries one that covers these tokens, else the placeholder
    token ids of the config (image/video/audio token id), else text."""
    import torch

    types = ctx.get("mm_token_type_ids")
    mask = ctx.get("attention_mask")
    full_len = mask.shape[-1] if isinstance(mask, torch.Tensor) else seq
    if isinstance(types, torch.Tensor) and types.dim() == 2 and types.shape[1] in (seq, full_len):
        return types[:, -seq:].to(device=device).clamp(0, 3).to(torch.uint8)
    codes = torch.zeros((batch, seq), dtype=torch.uint8, device=device)
    ids = ctx.get("input_ids")
    if ids is not None:
        ids = ids.to(device)
        for token, code in special.items():
            codes[ids == token] = code
    return codes


def _rows_of(site: RouterSite, split_masks: dict[int, Any], n_rows: int,
             num_sets: int) -> Any | None:
    """Row indices (into B*S) that ``site``'s router saw; None means all, in order."""
    if num_sets <= 1:
        return None
    mask = split_masks.get(site.layer)
    if mask is None or not bool(mask.any()):
        if site.set_index != 0:
            raise CaptureError(f"router {site.name} ran although no token of layer "
                               f"{site.decoder_layer} is marked for its expert set")
        return None
    vision = mask.reshape(-1).bool()
    chosen = vision if site.set_index else ~vision
    return chosen.nonzero().squeeze(1)


def assemble_step(recorder: Any, ctx: dict[str, Any], calls: list, split_masks: dict[int, Any],
                  *, index: int, finished: Any) -> tuple[Step | None, Any]:
    """One Step from a forward call, and the updated finished-sequence mask [B] bool.

    ``calls`` holds, per router call, ``(site, logits [n, E_set], weights [n, k],
    ids [n, k], entropy [n])`` as the router returned them.
    """
    import torch

    facts = recorder.facts
    batch, seq = _call_shape(ctx)
    if not calls:
        raise CaptureError(f"forward call {index} ran no MoE router (was it a vision-only or "
                           "embedding call?)")
    device = calls[0][1].device
    n_rows = batch * seq
    valid, position = _token_layout(ctx, batch, seq, device)
    mask = ctx.get("attention_mask")
    longer = isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] > seq
    kind = "decode" if longer or past_length(ctx) > 0 else "prefill"
    if kind == "decode" and (finished is None or finished.shape[0] != batch):
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
    if kind == "prefill":
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
    ids_in = ctx.get("input_ids")
    if kind == "decode" and recorder.eos_token_ids and ids_in is not None:
        eos = torch.tensor(recorder.eos_token_ids, device=device)
        finished = finished | torch.isin(ids_in[:, -1].to(device), eos)
        valid = valid & ~finished[:, None]

    ids, weights, scores, entropy = _gather(calls, facts, split_masks, n_rows, index)
    keep = valid.reshape(-1)
    pick = None if bool(keep.all()) else keep.nonzero().squeeze(1)
    if pick is not None and pick.numel() == 0:
        return None, finished

    def out(t: Any, axis: int) -> np.ndarray:
        if pick is not None:
            t = t.index_select(axis, pick)
        return t.cpu().numpy()

    modality = _modality(ctx, recorder.special_token_ids, batch, seq, device)
    request = np.repeat(recorder.request_ids_for(batch), seq)
    if pick is not None:
        request = request[pick.cpu().numpy()]
    step = Step(index=index, kind=kind, modality=out(modality.reshape(-1), 0),
                request_id=request, position=out(position.reshape(-1), 0),
                topk_ids=out(ids, 1), topk_weights=out(weights, 1), scores=out(scores, 1),
                entropy=out(entropy, 1))
    return step, finished


def _probs(logits: Any, softmax: bool) -> Any:
    """Router probabilities [n, E] float32 from its logits: softmax or sigmoid in fp32.

    On CPU, torch's softmax kernel is several times slower than exp/sum for short rows
    (8-32 experts); both give the same probabilities to float32 rounding.
    """
    import torch

    if not softmax:
        return logits.float().sigmoid()
    if logits.device.type == "cpu" and logits.shape[-1] <= 32:
        shifted = logits.float() - logits.float().amax(dim=-1, keepdim=True)
        expd = shifted.exp_()
        return expd.div_(expd.sum(dim=-1, keepdim=True))
    return torch.softmax(logits, dim=-1, dtype=torch.float32)


def _to_wire(scores: Any) -> Any:
    """float16 before a GPU->CPU copy (half the bytes; the trace stores float16 anyway);
    on CPU the writer's conversion is cheaper than a torch op inside the forward call."""
    return scores.half() if scores.device.type != "cpu" else scores


def _gather(calls: list, facts: Any, split_masks: dict[int, Any], n_rows: int,
            index: int) -> tuple[Any, Any, Any, Any]:
    """Per-layer router records -> ids [L, N, k] int64 (global ids), weights [L, N, k]
    float32, scores [L, N, E] (float16 off the CPU), entropy [L, N] float32, over all
    N = B*S rows."""
    import torch

    layers, k, experts = facts.num_moe_layers, facts.top_k, facts.num_experts
    softmax = facts.score_function == "softmax"
    num_sets = len(facts.sets())
    covered = [0] * layers
    for site, logits, _, chosen, _ in calls:
        rows = _rows_of(site, split_masks, n_rows, num_sets)
        n = n_rows if rows is None else int(rows.numel())
        if logits.shape[0] != n or tuple(chosen.shape) != (n, k):
            raise CaptureError(f"router {site.name}: returned {tuple(logits.shape[:1])} rows "
                               f"and ids {tuple(chosen.shape)}, expected {n} rows of top-{k}")
        covered[site.layer] += n
    for layer, count in enumerate(covered):
        if count != n_rows:
            raise CaptureError(f"forward call {index}: MoE layer {facts.moe_layers[layer]} "
                               f"routed {count} of {n_rows} rows (a router ran twice or not "
                               "at all)")
    if num_sets == 1:  # one router per layer, every row: stack in layer order
        ordered = sorted(calls, key=lambda c: c[0].layer)
        return (torch.stack([c[3].long() for c in ordered]),
                torch.stack([c[2].float() for c in ordered]),
                _to_wire(torch.stack([_probs(c[1], softmax) for c in ordered])),
                torch.stack([c[4] for c in ordered]))
    device = calls[0][1].device
    ids = torch.zeros((layers, n_rows, k), dtype=torch.long, device=device)
    weights = torch.zeros((layers, n_rows, k), dtype=torch.float32, device=device)
    scores = _to_wire(torch.zeros((layers, n_rows, experts), device=device))
    entropy = torch.zeros((layers, n_rows), dtype=torch.float32, device=device)
    for site, logits, w, chosen, ent in calls:
        rows = _rows_of(site, split_masks, n_rows, num_sets)
        at = slice(None) if rows is None else rows
        ids[site.layer, at] = chosen.long() + site.offset
        weights[site.layer, at] = w.float()
        entropy[site.layer, at] = ent
        scores[site.layer, at, site.offset:site.offset + site.num_experts] = \
            _probs(logits, softmax).to(scores.dtype)
    return ids, weights, scores, entropy
