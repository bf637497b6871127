"""One step of a trace: its arrays (``Step``), the table of fields format v1 allows, and
the checks every step passes on the way in (writer) and out (reader), so that an error
names the file, step, layer and field at fault."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from macssim._errors import TraceError
from macssim.trace._model import ModelFacts

__all__ = ["FIELDS_V2", "FIELD_NAMES", "FIELDS", "MODALITIES", "Step", "check_ids_in_range",
           "check_modality_codes", "check_step", "check_topk_ids", "normalise_step",
           "unscored_experts_per_gpu"]

MODALITIES = ("text", "image", "video", "audio")
"""Modality codes: the value stored in ``modality`` is the index in this tuple."""

# name -> (allowed dtypes on disk, dtype handed to callers, shape template, required).
# Shape letters: L MoE layers, T tokens of the step, k top-k, E experts.
FIELDS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...], bool]] = {
    "modality": (("|u1",), "uint8", ("T",), True),
    "request_id": (("<i8", "<i4"), "int64", ("T",), True),
    "position": (("<i4", "<i8"), "int64", ("T",), True),
    "topk_ids": (("<i2", "<i4"), "int64", ("L", "T", "k"), True),
    "topk_weights": (("<f4", "<f2"), "float32", ("L", "T", "k"), False),
    "scores": (("<f2", "<f4"), "float32", ("L", "T", "E"), False),
    "entropy": (("<f4", "<f2"), "float32", ("L", "T"), False),
}
FIELD_NAMES = tuple(FIELDS)

# Format v2 stores the same step fields, ids in one byte where E <= 256, and may keep, in
# place of ``scores``, the scores of the top-k experts and of the M highest-scored others
# (M, the header's "score_candidates"; shape letter M).
FIELDS_V2: dict[str, tuple[tuple[str, ...], str, tuple[str, ...], bool]] = {
    **FIELDS,
    "topk_ids": (("|u1", "<i2", "<i4"), "int64", ("L", "T", "k"), True),
    "topk_scores": (("<f2", "<f4"), "float32", ("L", "T", "k"), False),
    "cand_ids": (("|u1", "<i2", "<i4"), "int64", ("L", "T", "M"), False),
    "cand_scores": (("<f2", "<f4"), "float32", ("L", "T", "M"), False),
}
TOPN_FIELDS = ("topk_scores", "cand_ids", "cand_scores")
"""The v2 fields that together stand for a top-N ``scores``: all three or none."""
_STEP_KINDS = ("prefill", "decode")


@dataclass(frozen=True)
class Step:
    """One forward call of the model: a prefill batch or one decode step.

    Arrays (T tokens of the step, L MoE layers, k top-k, E experts):
        modality: [T] uint8, index into ``MODALITIES``.
        request_id: [T] int64, which request each token belongs to.
        position: [T] int64, the token's position in its request.
        topk_ids: [L, T, k] int64, experts the router chose, in the router's order.
        topk_weights: [L, T, k] float32 or None, gate weights as the router returned them.
        scores: [L, T, E] float32 or None, router probabilities over all experts
            (softmax or sigmoid, as the model's router computes them).
        entropy: [L, T] float32 or None, Shannon entropy (nats) of softmax over the hidden
            features of the MoE layer's input, per token.
        score_known: [L, T, E] bool or None. None: every score in ``scores`` is the
            router's. Else True where it is; where False the router's score was not kept
            (a v2 trace with top-N scores) and ``scores`` holds 0 there, which is NOT the
            router's score: a policy that reads such an entry must report it (see
            ``scores_complete`` and ``unscored_experts_per_gpu``).
        score_floor: [L, T] float32 or None (None exactly when ``score_known`` is None):
            every score that was not kept is <= this value (the lowest kept candidate
            score), so an absent expert never outranks a kept candidate.
    """

    index: int
    kind: str
    modality: np.ndarray
    request_id: np.ndarray
    position: np.ndarray
    topk_ids: np.ndarray
    topk_weights: np.ndarray | None = None
    scores: np.ndarray | None = None
    entropy: np.ndarray | None = None
    score_known: np.ndarray | None = None
    score_floor: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.modality.shape[0])

    @property
    def scores_complete(self) -> bool:
        """True when ``scores`` holds the router's score of every expert for every token
        and layer; False when there are no scores or only the top-N of each are kept."""
        return self.scores is not None and self.score_known is None

    @property
    def scores_kept(self) -> int | None:
        """N, the scores kept per token and layer (E when complete; None: no scores)."""
        if self.scores is None:
            return None
        if self.score_known is None:
            return int(self.scores.shape[-1])
        return int(self.score_known.sum(axis=-1).max()) if self.score_known.size else 0

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FIELD_NAMES
                if getattr(self, name) is not None}


def unscored_experts_per_gpu(step: Step, expert_gpu: np.ndarray) -> np.ndarray | None:
    """[L, T, G] int32: for each token and layer, how many experts on each GPU are neither
    the token's top-k nor scored in the trace (G = max(expert_gpu) + 1). None when the
    step's scores are complete (nothing is missing) or absent.

    Expanded Drop and MACS take every expert on the token's own GPU as a candidate and
    rank candidates by score: indexed at the token's GPU, a count > 0 means the policy
    cannot rank all of that token's local candidates (their scores were not kept, and
    read as 0), so its plan there may differ from the plan with every score. Count and
    report such token-layers, or refuse the step.
    """
    if step.score_known is None:
        return None
    expert_gpu = np.asarray(expert_gpu, dtype=np.int64)
    num_experts = step.score_known.shape[-1]
    if expert_gpu.shape != (num_experts,) or (expert_gpu.size and expert_gpu.min() < 0):
        raise TraceError(f"expert_gpu must be [E] = [{num_experts}] GPU indices >= 0, got "
                         f"shape {list(expert_gpu.shape)}")
    unknown = ~step.score_known
    np.put_along_axis(unknown, step.topk_ids, False, axis=2)
    num_gpus = int(expert_gpu.max()) + 1 if expert_gpu.size else 0
    onehot = np.zeros((num_experts, num_gpus), dtype=np.float32)
    onehot[np.arange(num_experts), expert_gpu] = 1.0
    # float32 so the sum runs in BLAS (~4x an integer matmul); counts <= E are exact
    return (unknown.astype(np.float32) @ onehot).astype(np.int32)


def _shape_of(template: tuple[str, ...], dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(dims[d] for d in template)


def _fmt_shape(shape: tuple[int, ...], num_tokens: int) -> str:
    """Write a shape the way a person reads it, with the token count as ``T``."""
    return "[" + ", ".join("T" if i == 0 and s == num_tokens else str(s)
                           for i, s in enumerate(shape)) + "]"


def check_step(step: Step, model: ModelFacts, fields: tuple[str, ...], where: str,
               checked: tuple[str, ...] = ()) -> None:
    """Everything format v1 promises about a step's arrays; raises TraceError naming the
    step, layer and field at fault. ``checked``: float fields whose values the caller
    has already checked (finite, >= 0) in another form."""
    if step.kind not in _STEP_KINDS:
        raise TraceError(f'{where}: "kind" is {step.kind!r}, expected one of {_STEP_KINDS}')
    dims = {"L": model.num_moe_layers, "T": step.num_tokens, "k": model.top_k,
            "E": model.num_experts}
    for name in FIELD_NAMES:
        arr = getattr(step, name)
        if arr is None:
            if name in fields:
                raise TraceError(f'{where}: field "{name}" is missing')
            continue
        if name not in fields:
            raise TraceError(f'{where}: field "{name}" is present but the header does not '
                             f"list it in \"fields\" {list(fields)}")
        template = FIELDS[name][2]
        expected = _shape_of(template, dims)
        if tuple(arr.shape) != expected:
            if template[0] == "L" and arr.ndim == len(template) and arr.shape[0] == dims["L"]:
                raise TraceError(f'{where}, layer 0: "{name}" is '
                                 f"{_fmt_shape(arr.shape[1:], dims['T'])}, expected "
                                 f"{_fmt_shape(expected[1:], dims['T'])}")
            raise TraceError(f'{where}: "{name}" has shape {list(arr.shape)}, expected '
                             f"[{', '.join(template)}] = {list(expected)}")
    _check_score_mask(step, dims, where)
    _check_values(step, model, where, checked)


def _check_score_mask(step: Step, dims: dict[str, int], where: str) -> None:
    """``score_known`` and ``score_floor`` come together, with scores, in their shapes."""
    known, floor = step.score_known, step.score_floor
    if known is None and floor is None:
        return
    if known is None or floor is None or step.scores is None:
        raise TraceError(f'{where}: "score_known" and "score_floor" go together, with '
                         '"scores"')
    expected = (dims["L"], dims["T"], dims["E"])
    if tuple(known.shape) != expected or known.dtype != np.bool_:
        raise TraceError(f'{where}: "score_known" must be bool {list(expected)}, got '
                         f"{known.dtype} {list(known.shape)}")
    if tuple(floor.shape) != expected[:2]:
        raise TraceError(f'{where}: "score_floor" must be {list(expected[:2])}, got '
                         f"{list(floor.shape)}")


def _first_bad_layer(bad: np.ndarray) -> int:
    """Index of the first layer (axis 0) with a True anywhere."""
    return int(np.argmax(bad.reshape(bad.shape[0], -1).any(axis=1)))


def check_modality_codes(modality: np.ndarray, where: str) -> None:
    """Every code indexes ``MODALITIES``."""
    if modality.size:
        low, high = int(modality.min()), int(modality.max())
        if low < 0 or high >= len(MODALITIES):
            raise TraceError(f'{where}: "modality" holds code {high if high > 0 else low}, '
                             f"expected 0..{len(MODALITIES) - 1} ({', '.join(MODALITIES)})")


def check_ids_in_range(ids: np.ndarray, num_experts: int, name: str, where: str) -> None:
    """Every id in [L, T, n] ``ids`` names an expert 0..E-1."""
    if not ids.size:
        return
    bad = (ids < 0) | (ids >= num_experts)
    if bad.any():
        layer = _first_bad_layer(bad)
        raise TraceError(f'{where}, layer {layer}: "{name}" holds expert '
                         f"{int(ids[layer][bad[layer]][0])}, expected 0 <= id < E = "
                         f"{num_experts}")


def check_topk_ids(ids: np.ndarray, num_experts: int, where: str) -> None:
    """``topk_ids`` [L, T, k] names experts 0..E-1, no expert twice for one token."""
    check_ids_in_range(ids, num_experts, "topk_ids", where)
    if not ids.size:
        return
    srt = np.sort(ids, axis=-1)
    dup = (srt[..., 1:] == srt[..., :-1]).any(axis=-1)
    if dup.any():
        layer = _first_bad_layer(dup)
        token = int(np.argmax(dup[layer]))
        raise TraceError(f'{where}, layer {layer}: "topk_ids" names one expert twice for '
                         f"token {token}: {ids[layer, token].tolist()}")


def _check_values(step: Step, model: ModelFacts, where: str,
                  checked: tuple[str, ...] = ()) -> None:
    check_modality_codes(step.modality, where)
    if "topk_ids" not in checked:
        check_topk_ids(step.topk_ids, model.num_experts, where)
    for name in ("topk_weights", "scores", "entropy"):
        arr = getattr(step, name)
        if arr is None or not arr.size or name in checked:
            continue
        finite = np.isfinite(arr)
        if not finite.all():
            layer = _first_bad_layer(~finite)
            raise TraceError(f'{where}, layer {layer}: "{name}" holds NaN or inf')
        neg = arr < 0
        if neg.any():
            layer = _first_bad_layer(neg)
            raise TraceError(f'{where}, layer {layer}: "{name}" holds a negative value '
                             f"({float(arr[layer][neg[layer]][0])}), expected >= 0")


def normalise_step(step: Step, model: ModelFacts, fields: tuple[str, ...], where: str) -> Step:
    """Coerce a caller's arrays to the dtypes the format stores, refusing silent loss."""
    values: dict[str, Any] = {}
    for name in FIELD_NAMES:
        arr = getattr(step, name)
        if arr is None:
            values[name] = None
            continue
        arr = np.asarray(arr)
        if name in ("topk_ids", "request_id", "position", "modality"):
            if arr.dtype.kind not in "iu":
                raise TraceError(f'{where}: "{name}" has dtype {arr.dtype}, expected integers')
            if name in ("position", "request_id") and arr.size:
                disk = np.iinfo(np.dtype(FIELDS[name][0][0]))
                low, high = int(arr.min()), int(arr.max())
                if low < disk.min or high > disk.max:
                    raise TraceError(f'{where}: "{name}" holds {high if high > disk.max else low}'
                                     f", which does not fit the {disk.dtype} the format stores")
        elif arr.dtype.kind != "f":
            raise TraceError(f'{where}: "{name}" has dtype {arr.dtype}, expected floats')
        values[name] = arr
    return Step(index=step.index, kind=step.kind, **values, score_known=step.score_known,
                score_floor=step.score_floor)
