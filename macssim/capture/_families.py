"""One small adapter per model family: which router classes to hook, what their forward
returns, how scores are made from logits, and where the config keeps the model facts.

Routers are found by class name (``Qwen3VLMoeTextTopKRouter`` …), never by attribute path,
so a checkpoint that nests its text model differently still works. Facts checked against
transformers 5.x (tested on 5.23); 4.x routers return a different tuple and are refused.

Router outputs read (T = batch x sequence, flattened batch-major; k top-k; E experts):
    ``kind="topk"``: ``(router_logits [T, E], top_k_weights [T, k], top_k_index [T, k])``;
    ``kind="llama4"``: ``(router_scores [T, E], router_logits [T, E])``: the chosen ids are
    ``topk(router_logits, k, dim=1)`` (the router's own call), the weights are
    ``router_scores`` at those ids (sigmoid of the chosen logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from macssim._errors import CaptureError
from macssim.trace import ExpertSet, ModelFacts

__all__ = ["Family", "family_for_config", "get_family", "list_families", "model_facts"]


@dataclass(frozen=True)
class Family:
    """How to capture routing from one transformers model family."""

    name: str
    """Lower-case name as people write it, e.g. ``qwen3-vl-moe``."""
    title: str
    """What the family is, for ``--list-families``."""
    model_types: tuple[str, ...]
    """``config.model_type`` values of checkpoints of this family."""
    top_class: str
    """transformers class loaded for ``--model`` and built for ``--tiny``."""
    router_classes: tuple[str, ...]
    """Class names of the router modules to hook."""
    kind: Literal["topk", "llama4"] = "topk"
    """Shape of the router's return value (module docstring)."""
    score_function: Literal["softmax", "sigmoid"] = "softmax"
    """How the router turns logits into probabilities; the trace stores those."""
    vision: str | None = None
    """Layout of image inputs (``qwen``, ``llama4``, ``aria``, ``internvl``); None: text-only."""
    token_type_inputs: tuple[str, ...] = ()
    """Token-type inputs the model needs beside ``input_ids`` (from its processor)."""
    text_model_types: tuple[str, ...] = ()
    """For wrappers (InternVL): text-model types that carry MoE layers."""
    split_block: str | None = None
    """ERNIE: class of the block whose routers each see one modality's rows."""
    split_sets: tuple[tuple[str, str], ...] = ()
    """ERNIE: (expert-set name, attribute of the sub-block) in global-id order."""
    attrs: dict[str, Any] = field(default_factory=dict)
    """Config attribute names of the facts (``experts``, ``top_k``, ``expert_inter``,
    ``shared``, ``shared_inter``, ``dense_inter``); an int is a fixed value."""
    aliases: tuple[str, ...] = ()


_QWEN_TYPES = ("mm_token_type_ids",)
_FAMILIES: tuple[Family, ...] = (
    Family("qwen3-vl-moe", "Qwen3-VL MoE (Qwen3-VL-30B-A3B, 235B-A22B)", ("qwen3_vl_moe",),
           "Qwen3VLMoeForConditionalGeneration", ("Qwen3VLMoeTextTopKRouter",),
           vision="qwen", token_type_inputs=_QWEN_TYPES,
           attrs=dict(experts="num_experts", top_k="num_experts_per_tok",
                      expert_inter="moe_intermediate_size", dense_inter="intermediate_size"),
           aliases=("qwen3-vl",)),
    Family("qwen3.5-moe", "Qwen3.5 MoE (vision-language, hybrid linear attention)",
           ("qwen3_5_moe",), "Qwen3_5MoeForConditionalGeneration", ("Qwen3_5MoeTopKRouter",),
           vision="qwen", token_type_inputs=_QWEN_TYPES,
           attrs=dict(experts="num_experts", top_k="num_experts_per_tok",
                      expert_inter="moe_intermediate_size", shared=1,
                      shared_inter="shared_expert_intermediate_size"),
           aliases=("qwen3_5-moe", "qwen3.5")),
    Family("glm4v-moe", "GLM-4.5V / GLM-4.6V (sigmoid router, group-limited)", ("glm4v_moe",),
           "Glm4vMoeForConditionalGeneration", ("Glm4vMoeTextTopkRouter",),
           score_function="sigmoid", vision="qwen", token_type_inputs=_QWEN_TYPES,
           attrs=dict(experts="n_routed_experts", top_k="num_experts_per_tok",
                      expert_inter="moe_intermediate_size", shared="n_shared_experts",
                      shared_inter="moe_intermediate_size", dense_inter="intermediate_size"),
           aliases=("glm-4.5v", "glm4.5v")),
    Family("ernie4.5-vl", "ERNIE-4.5-VL MoE (separate text and vision experts)",
           ("ernie4_5_vl_moe",), "Ernie4_5_VLMoeForConditionalGeneration",
           ("Ernie4_5_VLMoeMoeTopKRouter",), vision="qwen",
           token_type_inputs=("mm_token_type_ids", "moe_mm_token_type_ids"),
           split_block="Ernie4_5_VLMoeMoeBlock",
           split_sets=(("text", "text_moe"), ("vision", "vision_moe")),
           attrs=dict(experts="moe_num_experts", top_k="moe_k",
                      expert_inter="moe_intermediate_size", shared="moe_num_shared_experts",
                      shared_inter="moe_intermediate_size", dense_inter="intermediate_size"),
           aliases=("ernie-4.5-vl", "ernie4_5_vl_moe")),
    Family("llama4", "Llama 4 (Scout, Maverick; top-1 sigmoid router + shared expert)",
           ("llama4",), "Llama4ForConditionalGeneration", ("Llama4Router",), kind="llama4",
           score_function="sigmoid", vision="llama4",
           attrs=dict(experts="num_local_experts", top_k="num_experts_per_tok",
                      expert_inter="intermediate_size", shared=1,
                      shared_inter="intermediate_size", dense_inter="intermediate_size_mlp")),
    Family("aria", "Aria (rhymes-ai, fine-grained MoE)", ("aria",), "AriaForConditionalGeneration",
           ("AriaTextTopKRouter",), vision="aria",
           attrs=dict(experts="moe_num_experts", top_k="moe_topk",
                      expert_inter="intermediate_size", shared="moe_num_shared_experts",
                      shared_inter="intermediate_size")),
    Family("internvl-moe", "InternVL 3.5 with a Qwen3-MoE text model (InternVL3.5-30B-A3B)",
           ("internvl",), "InternVLForConditionalGeneration",
           ("Qwen3MoeTopKRouter", "Qwen2MoeTopKRouter"), vision="internvl",
           text_model_types=("qwen3_moe", "qwen2_moe"),
           attrs=dict(experts="num_experts", top_k="num_experts_per_tok",
                      expert_inter="moe_intermediate_size", dense_inter="intermediate_size"),
           aliases=("internvl3.5-moe", "internvl")),
    Family("mixtral", "Mixtral (text)", ("mixtral",), "MixtralForCausalLM", ("MixtralTopKRouter",),
           attrs=dict(experts="num_local_experts", top_k="num_experts_per_tok",
                      expert_inter="intermediate_size")),
    Family("qwen2-moe", "Qwen1.5/Qwen2 MoE (text, shared expert)", ("qwen2_moe",),
           "Qwen2MoeForCausalLM", ("Qwen2MoeTopKRouter",),
           attrs=dict(experts="num_experts", top_k="num_experts_per_tok",
                      expert_inter="moe_intermediate_size", shared=1,
                      shared_inter="shared_expert_intermediate_size",
                      dense_inter="intermediate_size")),
    Family("qwen3-moe", "Qwen3 MoE (text)", ("qwen3_moe",), "Qwen3MoeForCausalLM",
           ("Qwen3MoeTopKRouter",),
           attrs=dict(experts="num_experts", top_k="num_experts_per_tok",
                      expert_inter="moe_intermediate_size", dense_inter="intermediate_size")),
    Family("olmoe", "OLMoE (text)", ("olmoe",), "OlmoeForCausalLM", ("OlmoeTopKRouter",),
           attrs=dict(experts="num_experts", top_k="num_experts_per_tok",
                      expert_inter="intermediate_size")),
    Family("phimoe", "Phi-3.5-MoE (text, sparsemixer router)", ("phimoe",), "PhimoeForCausalLM",
           ("PhimoeTopKRouter",),
           attrs=dict(experts="num_local_experts", top_k="num_experts_per_tok",
                      expert_inter="intermediate_size")),
    Family("deepseek-v2", "DeepSeek-V2 / V2-Lite (text, softmax router)", ("deepseek_v2",),
           "DeepseekV2ForCausalLM", ("DeepseekV2TopkRouter",),
           attrs=dict(experts="n_routed_experts", top_k="num_experts_per_tok",
                      expert_inter="moe_intermediate_size", shared="n_shared_experts",
                      shared_inter="moe_intermediate_size", dense_inter="intermediate_size")),
    Family("deepseek-v3", "DeepSeek-V3 / R1 and Kimi-style text towers (sigmoid, bias)",
           ("deepseek_v3",), "DeepseekV3ForCausalLM", ("DeepseekV3TopkRouter",),
           score_function="sigmoid",
           attrs=dict(experts="n_routed_experts", top_k="num_experts_per_tok",
                      expert_inter="moe_intermediate_size", shared="n_shared_experts",
                      shared_inter="moe_intermediate_size", dense_inter="intermediate_size")),
)
_BY_NAME = {f.name: f for f in _FAMILIES}
_ALIASES = {a: f.name for f in _FAMILIES for a in f.aliases}


def list_families() -> list[Family]:
    """Every supported family, vision-language first."""
    return list(_FAMILIES)


def _known() -> str:
    return ", ".join(f.name for f in _FAMILIES)


def get_family(name: str) -> Family:
    """Look a family up by the name people write (``qwen3-vl-moe``, ``GLM-4.5V`` …)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return _BY_NAME[key]
    except KeyError:
        raise CaptureError(f"unknown model family {name!r}; supported: {_known()}") from None


def family_for_config(config: Any, where: str = "model") -> Family:
    """The family of a transformers config, from its ``model_type``; raises CaptureError
    naming the supported families when there is none, or when the checkpoint has no MoE
    text model (InternVL with a dense LLM)."""
    model_type = getattr(config, "model_type", None)
    for fam in _FAMILIES:
        if model_type in fam.model_types:
            if fam.text_model_types:
                text_type = getattr(config.get_text_config(), "model_type", None)
                if text_type not in fam.text_model_types:
                    raise CaptureError(
                        f"{where}: {model_type} with a {text_type!r} text model has no MoE "
                        f"routers; {fam.name} needs text model_type in "
                        f"{list(fam.text_model_types)}")
            return fam
    raise CaptureError(f"{where}: architecture {model_type!r} is not supported; supported "
                       f"families: {_known()} (see `macssim capture --list-families`)")


def _attr(config: Any, fam: Family, key: str, default: Any = 0) -> Any:
    name = fam.attrs.get(key)
    if name is None:
        return default
    if isinstance(name, int):
        return name
    value = getattr(config, name, None)
    if value is None:
        return default
    if isinstance(value, list | tuple):  # ERNIE: [text experts, vision experts]
        return value[0]
    return value


def model_facts(config: Any, fam: Family, moe_layers: tuple[int, ...], *, name: str,
                dtype: str, source: str) -> ModelFacts:
    """Model facts for the trace header, read from the model's config.

    ``moe_layers`` comes from the routers actually found in the model (the decoder-layer
    index of each), so the trace's layer axis is exactly what was hooked.
    """
    text = config.get_text_config()
    per_set = int(_attr(text, fam, "experts"))
    top_k = int(_attr(text, fam, "top_k"))
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    hidden = int(text.hidden_size)
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if heads else 128)
    sets: tuple[ExpertSet, ...] = ()
    if fam.split_sets:
        sets = tuple(ExpertSet(set_name, i * per_set, per_set)
                     for i, (set_name, _) in enumerate(fam.split_sets))
    try:
        return ModelFacts(
            name=name, num_layers=int(text.num_hidden_layers), moe_layers=tuple(moe_layers),
            num_experts=per_set * max(1, len(sets)), top_k=top_k, hidden_size=hidden,
            expert_intermediate_size=int(_attr(text, fam, "expert_inter")),
            num_shared_experts=int(_attr(text, fam, "shared")),
            shared_intermediate_size=int(_attr(text, fam, "shared_inter")),
            dense_intermediate_size=int(_attr(text, fam, "dense_inter")),
            num_attention_heads=heads or 32,
            num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads or 4),
            head_dim=int(head_dim), vocab_size=int(getattr(text, "vocab_size", 0) or 0) or 1,
            dtype=dtype, score_function=fam.score_function,
            vision_flops_per_token=vision_flops_per_token(config, fam),
            expert_sets=sets, source=source)
    except (TypeError, ValueError, AttributeError) as e:
        raise CaptureError(f"{name}: cannot read model facts from its config: {e}") from e


def vision_flops_per_token(config: Any, fam: Family) -> float:
    """Dense ViT forward FLOPs per LLM-facing visual token: every block runs attention
    projections (4·h² MACs) and an MLP (2·h·i MACs) per patch, 2 FLOPs per MAC, times the
    patches folded into one LLM token (2x2 merge -> 4). 0 for text-only families."""
    vc = getattr(config, "vision_config", None)
    if fam.vision is None or vc is None:
        return 0.0
    depth = getattr(vc, "depth", None) or getattr(vc, "num_hidden_layers", 0)
    hidden, inter = int(vc.hidden_size), int(vc.intermediate_size)
    if fam.vision == "qwen":
        merge = float(getattr(vc, "spatial_merge_size", 1) ** 2)
    elif fam.vision == "llama4":
        merge = 1.0 / float(vc.pixel_shuffle_ratio) ** 2
    elif fam.vision == "internvl":
        merge = 1.0 / float(config.downsample_ratio) ** 2
    else:  # aria: patches per query of its largest crop
        table = {int(k): int(v) for k, v in config.projector_patch_to_query_dict.items()}
        most = max(table)
        merge = most / table[most]
    return float(depth * 2 * (4 * hidden * hidden + 2 * hidden * inter) * merge)
