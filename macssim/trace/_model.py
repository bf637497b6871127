"""Model facts: what the cluster model needs to know about the network whose routing a
trace holds, and presets for the MoE vision-language models people serve.

Every preset figure comes from the model's public ``config.json`` (Hugging Face hub);
the text tower is what matters here, since the MoE layers live there.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from macssim._errors import TraceError
from macssim._validate import Limits, brief, check_choice, check_int, check_number, check_text

__all__ = [
    "DTYPE_BYTES",
    "ModelFacts",
    "ExpertSet",
    "get_model_preset",
    "list_model_presets",
]

DTYPE_BYTES: dict[str, int] = {
    "float64": 8, "float32": 4, "bfloat16": 2, "float16": 2,
    "float8": 1, "fp8": 1, "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1,
    "float8_e5m2fnuz": 1, "int8": 1, "uint8": 1,
}
"""Serving dtypes a model may declare (torch's names, as a capture writes them), with the
bytes one element takes."""

MAX_TEXT = 10_000
"""Longest ``name``/``source`` string: a checkpoint path or a sentence of provenance."""


@dataclass(frozen=True)
class ExpertSet:
    """A block of expert ids served by one router. Most models have one set holding all
    experts; ERNIE-4.5-VL has a text set and a vision set, stored side by side in one id
    space so that one trace keeps them apart."""

    name: str
    first: int
    """First global expert id of the set."""
    count: int
    """Number of experts in the set."""


@dataclass(frozen=True)
class ModelFacts:
    """The shape of a MoE model, as far as routing and the cluster model need it.

    Every field is checked on construction (types, ranges, the limits in
    ``macssim._validate.Limits``), so a header from a stranger cannot claim a billion
    experts or a negative head count; errors are ``TraceError`` naming the field."""

    name: str
    """Preset or checkpoint name, e.g. ``qwen3-vl-30b-a3b``."""
    num_layers: int
    """Decoder layers, dense and MoE together."""
    moe_layers: tuple[int, ...]
    """Decoder-layer index of each MoE layer, in order; trace layer ``l`` is ``moe_layers[l]``."""
    num_experts: int
    """Routed experts per MoE layer (all expert sets together)."""
    top_k: int
    """Experts each token is routed to."""
    hidden_size: int
    """Width of the residual stream; a dispatched token carries this many elements."""
    expert_intermediate_size: int
    """Intermediate width of one routed expert (SwiGLU)."""
    num_shared_experts: int = 0
    """Always-on experts, run locally on every GPU (no dispatch)."""
    shared_intermediate_size: int = 0
    """Intermediate width of one shared expert (0: same as a routed expert)."""
    dense_intermediate_size: int = 0
    """Intermediate width of the MLP in dense (non-MoE) layers."""
    num_attention_heads: int = 32
    num_kv_heads: int = 4
    head_dim: int = 128
    vocab_size: int = 151936
    dtype: str = "bfloat16"
    """Dtype weights and activations are served in; sets bytes per element."""
    score_function: Literal["softmax", "sigmoid"] = "softmax"
    """How the router turns logits into the scores a trace stores."""
    vision_flops_per_token: float = 0.0
    """Vision-encoder FLOPs per image/video token reaching the LLM (prefill only)."""
    expert_sets: tuple[ExpertSet, ...] = field(default=())
    """Router-specific expert blocks; empty means one set with every expert."""
    source: str = ""
    """Where the figures come from."""

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        name = values["name"]
        where = f"model {brief(name)}" if isinstance(name, str) else "model"
        for key, value in _check_facts(values, where).items():
            object.__setattr__(self, key, value)

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def bytes_per_element(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def expert_params(self) -> int:
        """Weights of one SwiGLU expert: gate, up and down projections."""
        return 3 * self.hidden_size * self.expert_intermediate_size

    def sets(self) -> tuple[ExpertSet, ...]:
        return self.expert_sets or (ExpertSet("all", 0, self.num_experts),)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "model") -> ModelFacts:
        """Build from a trace header; unknown keys are an error so typos do not pass.
        Whatever ``data`` holds, the only error is a ``TraceError`` naming ``where`` and
        the field."""
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            raise TraceError(f"{where}: expected an object with named fields, got "
                             f"{brief(data)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TraceError(f"{where}: unknown field(s) {brief(unknown)}; known: "
                             f"{sorted(known)}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise TraceError(f"{where}: missing field(s) {missing}")
        values = {f.name: (data[f.name] if f.name in data else
                           f.default if f.default is not dataclasses.MISSING else
                           f.default_factory())
                  for f in dataclasses.fields(cls)}
        return cls(**_check_facts(values, where))


_INT_FIELDS: tuple[tuple[str, int, int], ...] = (
    # name, low, high
    ("num_layers", 1, Limits.MAX_LAYERS),
    ("num_experts", 1, Limits.MAX_EXPERTS),
    ("top_k", 1, Limits.MAX_TOP_K),
    ("hidden_size", 1, Limits.MAX_HIDDEN),
    ("expert_intermediate_size", 1, Limits.MAX_HIDDEN),
    ("num_shared_experts", 0, Limits.MAX_EXPERTS),
    ("shared_intermediate_size", 0, Limits.MAX_HIDDEN),
    ("dense_intermediate_size", 0, Limits.MAX_HIDDEN),
    ("num_attention_heads", 1, Limits.MAX_HIDDEN),
    ("num_kv_heads", 1, Limits.MAX_HIDDEN),
    ("head_dim", 1, Limits.MAX_HIDDEN),
    ("vocab_size", 1, Limits.MAX_HIDDEN),
)


def _as_int(value: Any) -> Any:
    """A numpy scalar becomes its Python twin; anything else is left to the checks."""
    if isinstance(value, np.integer):
        return operator.index(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _check_facts(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Every field of ``values`` checked and normalised (tuples, Python ints and floats,
    ``ExpertSet``s); raises TraceError naming ``where`` and the field."""
    out = dict(values)
    err = {"error": TraceError}
    if not isinstance(values["name"], str) or len(values["name"]) > MAX_TEXT:
        raise TraceError(f'{where}: "name" must be a string of at most {MAX_TEXT} '
                         f"characters, got {brief(values['name'])}")
    if not isinstance(values["source"], str) or len(values["source"]) > MAX_TEXT:
        raise TraceError(f'{where}: "source" must be a string of at most {MAX_TEXT} '
                         f"characters, got {brief(values['source'])}")
    for key, low, high in _INT_FIELDS:
        out[key] = check_int(_as_int(values[key]), where, key, low=low, high=high, **err)
    num_layers, num_experts = out["num_layers"], out["num_experts"]
    if out["top_k"] > num_experts:
        raise TraceError(f'{where}: "top_k" ({out["top_k"]}) exceeds "num_experts" '
                         f"({num_experts}): a token cannot choose more experts than exist")
    layers = values["moe_layers"]
    if (isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple))
            or not layers or len(layers) > num_layers):
        raise TraceError(f'{where}: "moe_layers" must be a non-empty list of at most '
                         f'"num_layers" = {num_layers} layer indices, got {brief(layers)}')
    moe = tuple(check_int(_as_int(v), where, f"moe_layers[{i}]", low=0, high=num_layers - 1,
                          **err) for i, v in enumerate(layers))
    for i in range(1, len(moe)):
        if moe[i] <= moe[i - 1]:
            raise TraceError(f'{where}: "moe_layers" must be strictly increasing, got '
                             f"{moe[i - 1]} then {moe[i]} at entries {i - 1} and {i}")
    out["moe_layers"] = moe
    out["dtype"] = check_choice(values["dtype"], where, "dtype", tuple(DTYPE_BYTES), **err)
    out["score_function"] = check_choice(values["score_function"], where, "score_function",
                                         ("softmax", "sigmoid"), **err)
    out["vision_flops_per_token"] = check_number(
        _as_int(values["vision_flops_per_token"]), where, "vision_flops_per_token", low=0,
        **err)
    out["expert_sets"] = _check_sets(values["expert_sets"], num_experts, where)
    return out


def _check_sets(sets: Any, num_experts: int, where: str) -> tuple[ExpertSet, ...]:
    """Expert sets: mappings or ``ExpertSet``s with a name, a first id and a count, inside
    [0, E) and disjoint."""
    if isinstance(sets, (str, bytes)) or not isinstance(sets, (list, tuple)) \
            or len(sets) > num_experts:
        raise TraceError(f'{where}: "expert_sets" must be a list of at most "num_experts" = '
                         f"{num_experts} objects {{name, first, count}}, got {brief(sets)}")
    out: list[ExpertSet] = []
    for i, item in enumerate(sets):
        field_ = f"expert_sets[{i}]"
        if isinstance(item, ExpertSet):
            item = dataclasses.asdict(item)
        if not isinstance(item, Mapping) or set(item) != {"name", "first", "count"}:
            raise TraceError(f'{where}: "{field_}" must be an object with exactly the keys '
                             f"name, first, count, got {brief(item)}")
        name = check_text(item["name"], where, f"{field_}.name", error=TraceError)
        if name != item["name"]:
            raise TraceError(f'{where}: "{field_}.name" must not start or end with spaces, '
                             f"got {brief(item['name'])}")
        first = check_int(_as_int(item["first"]), where, f"{field_}.first", low=0,
                          high=num_experts - 1, error=TraceError)
        count = check_int(_as_int(item["count"]), where, f"{field_}.count", low=1,
                          high=num_experts - first, error=TraceError)
        out.append(ExpertSet(name, first, count))
    ordered = sorted(out, key=lambda s: s.first)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.first < a.first + a.count:
            raise TraceError(f'{where}: "expert_sets" overlap: {a.name!r} holds experts '
                             f"[{a.first}, {a.first + a.count}) and {b.name!r} starts at "
                             f"{b.first}")
    if len({s.name for s in out}) != len(out):
        raise TraceError(f'{where}: "expert_sets" names must differ, got '
                         f"{brief([s.name for s in out])}")
    return tuple(out)


def _vit_flops_per_token(depth: int, hidden: int, intermediate: int, merge: int) -> float:
    """Dense ViT forward FLOPs per LLM-facing visual token: each LLM token is ``merge``
    patches (spatial merge 2x2 -> 4), each patch runs ``depth`` blocks of attention
    projections (4·h²) and an MLP (2·h·i, GELU, 2 matrices): 2 FLOPs per MAC."""
    per_patch = depth * 2 * (4 * hidden * hidden + 2 * hidden * intermediate)
    return float(per_patch * merge)


_PRESETS: dict[str, ModelFacts] = {
    "qwen3-vl-30b-a3b": ModelFacts(
        name="qwen3-vl-30b-a3b",
        num_layers=48, moe_layers=tuple(range(48)), num_experts=128, top_k=8,
        hidden_size=2048, expert_intermediate_size=768,
        num_attention_heads=32, num_kv_heads=4, head_dim=128, vocab_size=151936,
        dense_intermediate_size=6144,
        vision_flops_per_token=_vit_flops_per_token(27, 1152, 4304, 4),
        source="Qwen/Qwen3-VL-30B-A3B-Instruct config.json: text_config num_hidden_layers 48, "
               "num_experts 128, num_experts_per_tok 8, hidden_size 2048, "
               "moe_intermediate_size 768; vision_config depth 27, hidden 1152, "
               "intermediate 4304, spatial_merge_size 2",
    ),
    "internvl3.5-30b-a3b": ModelFacts(
        name="internvl3.5-30b-a3b",
        num_layers=48, moe_layers=tuple(range(48)), num_experts=128, top_k=8,
        hidden_size=2048, expert_intermediate_size=768,
        num_attention_heads=32, num_kv_heads=4, head_dim=128, vocab_size=151936,
        dense_intermediate_size=6144,
        vision_flops_per_token=_vit_flops_per_token(24, 1024, 4096, 4),
        source="OpenGVLab/InternVL3_5-30B-A3B config.json: llm_config (Qwen3-MoE) 48 layers, "
               "128 experts, top-8, hidden 2048, moe_intermediate_size 768; vision InternViT-300M "
               "(24 layers, hidden 1024, intermediate 4096), pixel shuffle 0.5 (4 patches/token)",
    ),
    "kimi-vl-a3b": ModelFacts(
        name="kimi-vl-a3b",
        num_layers=27, moe_layers=tuple(range(1, 27)), num_experts=64, top_k=6,
        hidden_size=2048, expert_intermediate_size=1408,
        num_shared_experts=2, shared_intermediate_size=1408, dense_intermediate_size=11264,
        num_attention_heads=16, num_kv_heads=16, head_dim=128, vocab_size=163840,
        vision_flops_per_token=_vit_flops_per_token(27, 1152, 4304, 4),
        source="moonshotai/Kimi-VL-A3B-Instruct config.json: text_config (DeepSeek-V3 style) "
               "num_hidden_layers 27, first_k_dense_replace 1, n_routed_experts 64, "
               "num_experts_per_tok 6, n_shared_experts 2, hidden 2048, "
               "moe_intermediate_size 1408, intermediate_size 11264; MoonViT 27 layers, "
               "hidden 1152, 2x2 merge",
    ),
}


def list_model_presets() -> list[str]:
    return sorted(_PRESETS)


def get_model_preset(name: str) -> ModelFacts:
    try:
        return _PRESETS[name.lower()]
    except KeyError:
        raise TraceError(f"unknown model preset {name!r}; known: "
                         f"{', '.join(list_model_presets())}") from None
