"""Model facts: what the cluster model needs to know about the network whose routing a
trace holds, and presets for the MoE vision-language models people serve.

Every preset figure comes from the model's public ``config.json`` (Hugging Face hub);
the text tower is what matters here, since the MoE layers live there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from macssim._errors import TraceError

__all__ = [
    "ModelFacts",
    "ExpertSet",
    "get_model_preset",
    "list_model_presets",
]


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
    """The shape of a MoE model, as far as routing and the cluster model need it."""

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
        for name in ("num_layers", "num_experts", "top_k", "hidden_size",
                     "expert_intermediate_size"):
            if int(getattr(self, name)) <= 0:
                raise TraceError(f'model "{self.name}": "{name}" must be > 0, '
                                 f"got {getattr(self, name)!r}")
        if self.top_k > self.num_experts:
            raise TraceError(f'model "{self.name}": "top_k" ({self.top_k}) exceeds '
                             f'"num_experts" ({self.num_experts})')
        if not self.moe_layers:
            raise TraceError(f'model "{self.name}": "moe_layers" is empty')
        if any(not 0 <= i < self.num_layers for i in self.moe_layers):
            raise TraceError(f'model "{self.name}": "moe_layers" must lie in '
                             f"[0, {self.num_layers}), got {list(self.moe_layers)}")
        if self.score_function not in ("softmax", "sigmoid"):
            raise TraceError(f'model "{self.name}": "score_function" must be softmax or '
                             f"sigmoid, got {self.score_function!r}")

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def bytes_per_element(self) -> int:
        return {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1, "fp8": 1}.get(
            self.dtype, 2)

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
        """Build from a trace header; unknown keys are an error so typos do not pass."""
        if not isinstance(data, dict):
            raise TraceError(f"{where}: expected an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TraceError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise TraceError(f"{where}: missing field(s) {missing}")
        values = dict(data)
        values["moe_layers"] = tuple(int(i) for i in values["moe_layers"])
        values["expert_sets"] = tuple(
            ExpertSet(**s) if isinstance(s, dict) else s for s in values.get("expert_sets", ()))
        try:
            return cls(**values)
        except TypeError as e:
            raise TraceError(f"{where}: {e}") from e


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
