"""One step of a trace: its arrays (``Step``), the table of fields format v1 allows, and
the checks every step passes on the way in (writer) and out (reader), so that an error
names the file, step, layer and field at fault."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from macssim._errors import TraceError
from macssim.trace._model import ModelFacts

__all__ = ["FIELD_NAMES", "FIELDS", "MODALITIES", "Step", "check_step",
           "normalise_step"]

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

    @property
    def num_tokens(self) -> int:
        return int(self.modality.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FIELD_NAMES
                if getattr(self, name) is not None}


def _shape_of(template: tuple[str, ...], dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(dims[d] for d in template)


def _fmt_shape(shape: tuple[int, ...], num_tokens: int) -> str:
    """Write a shape the way a person reads it, with the token count as ``T``."""
    return "[" + ", ".join("T" if i == 0 and s == num_tokens else str(s)
                           for i, s in enumerate(shape)) + "]"


def check_step(step: Step, model: ModelFacts, fields: tuple[str, ...], where: str) -> None:
    """Everything format v1 promises about a step's arrays; raises TraceError naming the
    step, layer and field at fault."""
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
    _check_values(step, model, where)


def _first_bad_layer(bad: np.ndarray) -> int:
    """Index of the first layer (axis 0) with a True anywhere."""
    return int(np.argmax(bad.reshape(bad.shape[0], -1).any(axis=1)))


def _check_values(step: Step, model: ModelFacts, where: str) -> None:
    if step.num_tokens:
        low, high = int(step.modality.min()), int(step.modality.max())
        if low < 0 or high >= len(MODALITIES):
            raise TraceError(f'{where}: "modality" holds code {high if high > 0 else low}, '
                             f"expected 0..{len(MODALITIES) - 1} ({', '.join(MODALITIES)})")
    ids = step.topk_ids
    if ids.size:
        bad = (ids < 0) | (ids >= model.num_experts)
        if bad.any():
            layer = _first_bad_layer(bad)
            value = int(ids[layer][bad[layer]][0])
            raise TraceError(f'{where}, layer {layer}: "topk_ids" holds expert {value}, expected '
                             f"0 <= id < E = {model.num_experts}")
        srt = np.sort(ids, axis=-1)
        dup = (srt[..., 1:] == srt[..., :-1]).any(axis=-1)
        if dup.any():
            layer = _first_bad_layer(dup)
            token = int(np.argmax(dup[layer]))
            raise TraceError(f'{where}, layer {layer}: "topk_ids" names one expert twice for '
                             f"token {token}: {ids[layer, token].tolist()}")
    for name in ("topk_weights", "scores", "entropy"):
        arr = getattr(step, name)
        if arr is None or not arr.size:
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
    return Step(index=step.index, kind=step.kind, **values)
