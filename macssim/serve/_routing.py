"""A served step's routing, composed from what the trace recorded for its requests.

A trace records steps; serving forms its own steps from the requests that happen to be
running together. What carries over is the request: each of a served request's tokens
keeps the routing (expert ids, gate weights, scores, entropy, modality) the trace
recorded for the same token of the recorded request it replays. So the load a step puts
on the experts is the load its requests would really put there, in any batch.

- **Prefill tokens** are the recorded request's prompt tokens (its prefill rows, in
  position order); prompt length is the recorded one.
- **Decode tokens**: the j-th decode token (j = 0, 1, …) takes the recorded request's
  decode row ``j mod D`` (D decode rows recorded), i.e. the recorded decode rows are
  cycled when more output is asked than was recorded. A request with no recorded decode
  row (a prefill-only trace) decodes with the routing of its last prompt token, counted
  as text. Positions are always the served ones (P + j), so attention costs the served
  context. ``RecordedRequests.cycled_decode_rows`` counts decode tokens whose routing is
  such a repeat, and run.json records it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from macssim.serve._scheduler import Chunk, ServeError
from macssim.trace import Step, Trace

__all__ = ["RecordedRequest", "compose_step", "recorded_requests", "step_key"]

_TOKEN_FIELDS = ("modality", "topk_ids", "topk_weights", "scores", "entropy", "score_known",
                 "score_floor")
"""Per-token fields of a ``Step`` that a served token inherits; [T] fields have the token
axis first, [L, T, ...] fields second."""
_TOKEN_AXIS = {"modality": 0}
_TEXT = 0


@dataclass(frozen=True)
class RecordedRequest:
    """One request of the trace: its prompt rows and its decode rows, per field."""

    request_id: int
    prefill: dict[str, np.ndarray]
    decode: dict[str, np.ndarray]
    """Decode rows; when the trace recorded none, the last prompt row as a text token."""
    decode_recorded: int
    """Decode rows the trace really holds (0: ``decode`` is the borrowed prompt row)."""

    @property
    def prompt_tokens(self) -> int:
        return int(self.prefill["modality"].shape[0])

    @property
    def decode_rows(self) -> int:
        return int(self.decode["modality"].shape[0])


def _axis(name: str) -> int:
    return _TOKEN_AXIS.get(name, 1)


def recorded_requests(trace: Trace, max_steps: int | None = None) -> list[RecordedRequest]:
    """Every request of ``trace`` that has prompt tokens, in order of first appearance.

    Reads the whole trace (the first ``max_steps`` steps) into memory: a request's rows
    are scattered over many steps.
    """
    pieces: dict[int, dict[str, list[tuple[np.ndarray, dict[str, np.ndarray]]]]] = {}
    for step in trace:
        if max_steps is not None and step.index >= max_steps:
            break
        for rid in dict.fromkeys(step.request_id.tolist()):
            sel = np.flatnonzero(step.request_id == rid)
            rows = {name: np.take(getattr(step, name), sel, axis=_axis(name))
                    for name in _TOKEN_FIELDS if getattr(step, name) is not None}
            pieces.setdefault(int(rid), {"prefill": [], "decode": []})[step.kind].append(
                (step.position[sel], rows))
    out = []
    for rid, kinds in pieces.items():
        if not kinds["prefill"]:
            continue
        prefill = _join(kinds["prefill"])
        if kinds["decode"]:
            decode, recorded = _join(kinds["decode"]), sum(p.size for p, _ in kinds["decode"])
        else:
            decode = {n: np.take(a, [a.shape[_axis(n)] - 1], axis=_axis(n))
                      for n, a in prefill.items()}
            decode["modality"] = np.full(1, _TEXT, dtype=np.uint8)
            recorded = 0
        out.append(RecordedRequest(rid, prefill, decode, recorded))
    if not out:
        raise ServeError(f"{trace.path}: no request with prompt (prefill) tokens to replay"
                         + ("" if trace.num_steps else "; the trace has no steps"))
    return out


def _join(parts: list[tuple[np.ndarray, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Concatenate a request's rows from several steps, in position order."""
    position = np.concatenate([p for p, _ in parts])
    order = np.argsort(position, kind="stable")
    return {name: np.take(np.concatenate([r[name] for _, r in parts], axis=_axis(name)),
                          order, axis=_axis(name))
            for name in parts[0][1]}


def compose_step(index: int, chunks: Sequence[Chunk], recorded: Sequence[RecordedRequest],
                 replays: Sequence[int]) -> tuple[Step, np.ndarray]:
    """The trace-format ``Step`` of one served step, and its tokens' ranks.

    Args:
        chunks: the step's chunks (``StepBatch.chunks``), tokens laid out in this order.
        recorded: the trace's requests.
        replays: served request -> index into ``recorded``.

    Returns:
        ``(step, token_rank)``: ``step.request_id`` numbers the step's requests in chunk
        order (0, 1, …; a request has at most one chunk per step), so two steps made of
        the same chunks of the same recorded requests are identical inputs; its
        kind is ``prefill`` when any prompt token runs (the vision encoder runs on the
        prompt's image and video tokens), else ``decode``. ``token_rank``: [T] int64.
    """
    parts: dict[str, list[np.ndarray]] = {}
    position, request, rank = [], [], []
    for n, c in enumerate(chunks):
        rec = recorded[replays[c.request]]
        if c.kind == "prefill":
            src, rows = rec.prefill, np.arange(c.first, c.first + c.count)
        else:
            j = np.arange(c.first, c.first + c.count) - rec.prompt_tokens
            src, rows = rec.decode, j % rec.decode_rows
        for name, a in src.items():
            parts.setdefault(name, []).append(np.take(a, rows, axis=_axis(name)))
        position.append(np.arange(c.first, c.first + c.count, dtype=np.int64))
        request.append(np.full(c.count, n, dtype=np.int64))
        rank.append(np.full(c.count, c.rank, dtype=np.int64))
    arrays = {name: np.concatenate(p, axis=_axis(name)) for name, p in parts.items()}
    kind = "prefill" if any(c.kind == "prefill" for c in chunks) else "decode"
    step = Step(index=index, kind=kind, request_id=np.concatenate(request),
                position=np.concatenate(position), **arrays)
    return step, np.concatenate(rank)


def step_key(chunks: Sequence[Chunk], recorded: Sequence[RecordedRequest],
             replays: Sequence[int]) -> tuple:
    """What ``compose_step`` reads, as a hashable key: two steps with the same key are
    the same arrays (chunk by chunk: rank, recorded request, kind, positions; decode rows
    follow from the positions), hence the same plan and the same simulated step."""
    return tuple((c.rank, replays[c.request], c.kind, c.first, c.count) for c in chunks)
