"""Tiny random models of the real transformers classes, one per family, and inputs for them.

Why: nothing here can download weights, yet the hooks must be checked against the real
router, block and model classes. A tiny config (hidden 32, 2-4 layers, 8 experts) builds in
well under a second and runs a forward pass on CPU; the same code runs unchanged on a real
checkpoint. Token ids 1..15 are reserved for special tokens (image, video, start/end);
ordinary text tokens are drawn from 16..vocab-1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from macssim._errors import CaptureError
from macssim.capture._families import Family, get_family

__all__ = ["TinyRequest", "build_tiny_model", "tiny_batch", "tiny_config"]

VOCAB = 128
"""Vocabulary of every tiny model; ids below ``FIRST_TEXT_ID`` are special tokens."""
FIRST_TEXT_ID = 16
PAD, BOS, EOS = 0, 1, 2
IMAGE, VIDEO, VSTART, VEND, IMG_START, IMG_END, VID_START, VID_END = 3, 4, 5, 6, 7, 8, 9, 10

_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
_TEXT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, pad_token_id=PAD, bos_token_id=BOS,
             eos_token_id=EOS, max_position_embeddings=512)


def _qwen3_vl_moe() -> Any:
    from transformers import Qwen3VLMoeConfig

    text = dict(_TEXT, intermediate_size=37, moe_intermediate_size=16, num_experts=8,
                num_experts_per_tok=2, decoder_sparse_step=1,
                rope_parameters=dict(_ROPE, mrope_section=[2, 1, 1], mrope_interleaved=True))
    vision = dict(depth=2, hidden_size=32, intermediate_size=32, num_heads=4, patch_size=16,
                  spatial_merge_size=1, temporal_patch_size=2, out_hidden_size=32,
                  num_position_embeddings=16, deepstack_visual_indexes=[0, 1])
    return Qwen3VLMoeConfig(text_config=text, vision_config=vision, image_token_id=IMAGE,
                            video_token_id=VIDEO, vision_start_token_id=VSTART,
                            vision_end_token_id=VEND)


def _qwen3_5_moe() -> Any:
    from transformers import Qwen3_5MoeConfig

    text = dict(_TEXT, num_hidden_layers=4, moe_intermediate_size=16,
                shared_expert_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                linear_conv_kernel_dim=2, linear_key_head_dim=8, linear_value_head_dim=8,
                linear_num_key_heads=2, linear_num_value_heads=4,
                layer_types=["linear_attention", "full_attention"] * 2,
                rope_parameters=dict(_ROPE, mrope_section=[2, 1, 1], mrope_interleaved=True,
                                     partial_rotary_factor=1.0))
    vision = dict(depth=2, hidden_size=32, intermediate_size=32, num_heads=4, patch_size=16,
                  spatial_merge_size=1, temporal_patch_size=2, out_hidden_size=32,
                  num_position_embeddings=16)
    return Qwen3_5MoeConfig(text_config=text, vision_config=vision, image_token_id=IMAGE,
                            video_token_id=VIDEO, vision_start_token_id=VSTART,
                            vision_end_token_id=VEND)


def _glm4v_moe() -> Any:
    from transformers import Glm4vMoeConfig

    text = dict(_TEXT, num_hidden_layers=3, intermediate_size=37, moe_intermediate_size=16,
                n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=2,
                topk_group=1, first_k_dense_replace=1, routed_scaling_factor=1.0,
                rope_parameters=dict(_ROPE, mrope_section=[2, 1, 1], partial_rotary_factor=1.0))
    vision = dict(depth=2, hidden_size=32, intermediate_size=32, num_heads=4, patch_size=16,
                  image_size=32, spatial_merge_size=1, temporal_patch_size=2, out_hidden_size=32)
    return Glm4vMoeConfig(text_config=text, vision_config=vision, image_token_id=IMAGE,
                          video_token_id=VIDEO, image_start_token_id=IMG_START,
                          image_end_token_id=IMG_END, video_start_token_id=VID_START,
                          video_end_token_id=VID_END)


def _ernie4_5_vl() -> Any:
    from transformers import Ernie4_5_VLMoeConfig

    text = dict(_TEXT, num_hidden_layers=3, intermediate_size=32,
                rope_parameters=dict(_ROPE, mrope_section=[1, 1, 2]),
                mlp_layer_types=["dense", "sparse", "sparse"], moe_intermediate_size=[16, 24],
                moe_k=2, moe_num_experts=8, moe_num_shared_experts=1, tie_word_embeddings=True)
    vision = dict(depth=2, hidden_size=32, intermediate_size=32, num_heads=2, patch_size=16,
                  spatial_merge_size=1, hidden_act="silu")
    return Ernie4_5_VLMoeConfig(text_config=text, vision_config=vision, image_token_id=IMAGE,
                                video_token_id=VIDEO, image_start_token_id=IMG_START,
                                image_end_token_id=IMG_END, video_start_token_id=VID_START,
                                video_end_token_id=VID_END)


def _llama4() -> Any:
    from transformers import Llama4Config

    text = dict(_TEXT, intermediate_size=16, intermediate_size_mlp=37, num_local_experts=8,
                num_experts_per_tok=1, interleave_moe_layer_step=1, attention_chunk_size=64,
                rope_parameters=dict(_ROPE))
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, vision_output_dim=32, image_size=32, patch_size=8,
                  pixel_shuffle_ratio=0.5, projector_input_dim=32, projector_output_dim=32)
    return Llama4Config(text_config=text, vision_config=vision, image_token_index=IMAGE,
                        boi_token_index=IMG_START, eoi_token_index=IMG_END)


def _aria() -> Any:
    from transformers import AriaConfig

    text = dict(_TEXT, intermediate_size=16, moe_num_experts=8, moe_topk=2,
                moe_num_shared_experts=1, rope_parameters=dict(_ROPE))
    vision = dict(hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=4, image_size=32, patch_size=8)
    return AriaConfig(text_config=text, vision_config=vision, image_token_index=IMAGE,
                      projector_patch_to_query_dict={16: 4, 64: 4},
                      max_value_projector_patch_to_query_dict=4)


def _internvl_moe() -> Any:
    from transformers import InternVLConfig

    text = dict(_TEXT, model_type="qwen3_moe", intermediate_size=37, moe_intermediate_size=16,
                num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1,
                rope_parameters=dict(_ROPE))
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=32, image_size=[32, 32], patch_size=[8, 8])
    return InternVLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE,
                          image_seq_length=4, downsample_ratio=0.5)


def _mixtral() -> Any:
    from transformers import MixtralConfig

    return MixtralConfig(**_TEXT, intermediate_size=16, num_local_experts=8,
                         num_experts_per_tok=2)


def _qwen2_moe() -> Any:
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(**_TEXT, intermediate_size=37, moe_intermediate_size=16,
                          shared_expert_intermediate_size=24, num_experts=8,
                          num_experts_per_tok=2, decoder_sparse_step=1)


def _qwen3_moe() -> Any:
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(**_TEXT, intermediate_size=37, moe_intermediate_size=16,
                          num_experts=8, num_experts_per_tok=2, norm_topk_prob=True)


def _olmoe() -> Any:
    from transformers import OlmoeConfig

    return OlmoeConfig(**_TEXT, intermediate_size=16, num_experts=8, num_experts_per_tok=2)


def _phimoe() -> Any:
    from transformers import PhimoeConfig

    return PhimoeConfig(**_TEXT, intermediate_size=16, num_local_experts=8,
                        num_experts_per_tok=2)


def _deepseek(version: int) -> Any:
    import transformers

    common = dict(_TEXT, num_hidden_layers=3, intermediate_size=37, moe_intermediate_size=16,
                  n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
                  first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16,
                  qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, num_key_value_heads=4)
    common.pop("head_dim")
    if version == 2:
        return transformers.DeepseekV2Config(**common, topk_method="greedy")
    return transformers.DeepseekV3Config(**common, n_group=2, topk_group=1,
                                         routed_scaling_factor=2.5)


_CONFIGS = {
    "qwen3-vl-moe": _qwen3_vl_moe,
    "qwen3.5-moe": _qwen3_5_moe,
    "glm4v-moe": _glm4v_moe,
    "ernie4.5-vl": _ernie4_5_vl,
    "llama4": _llama4,
    "aria": _aria,
    "internvl-moe": _internvl_moe,
    "mixtral": _mixtral,
    "qwen2-moe": _qwen2_moe,
    "qwen3-moe": _qwen3_moe,
    "olmoe": _olmoe,
    "phimoe": _phimoe,
    "deepseek-v2": lambda: _deepseek(2),
    "deepseek-v3": lambda: _deepseek(3),
}


def tiny_config(family: str | Family) -> Any:
    """The transformers config of the tiny model of ``family`` (no download)."""
    fam = get_family(family) if isinstance(family, str) else family
    return _CONFIGS[fam.name]()


def build_tiny_model(family: str | Family, *, seed: int = 0, eager_experts: bool = True) -> Any:
    """A tiny model of the family's real transformers class with random weights, in eval
    mode, float32 on CPU. ``eager_experts`` selects the per-expert loop (bit-exact
    reproducible) over the grouped-GEMM default. Transformers bugs that break the class
    outright are repaired (``_compat.repair_model``)."""
    import torch

    from macssim.capture._compat import repair_model
    from macssim.capture._load import require_transformers

    transformers = require_transformers()
    fam = get_family(family) if isinstance(family, str) else family
    config = tiny_config(fam)
    cls = getattr(transformers, fam.top_class)
    torch.manual_seed(seed)
    model = repair_model(cls(config).eval())
    _fill_router_biases(model, seed)
    if eager_experts and hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    model.generation_config.bos_token_id = BOS
    model.generation_config.do_sample = False
    return model


def _fill_router_biases(model: Any, seed: int) -> None:
    """Random weights leave the DeepSeek/GLM ``e_score_correction_bias`` and ERNIE's
    ``moe_statics`` bias at zero; give them values so the tests see routing in which the
    bias changes the choice (ids are then not top-k of the scores)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.rand(buf.shape, generator=gen) * 0.2)
        for name, param in model.named_parameters():
            if name.endswith("e_score_correction_bias"):
                param.copy_(torch.rand(param.shape, generator=gen) * 0.2)


@dataclass(frozen=True)
class TinyRequest:
    """One synthetic request for a tiny model: ``text_before`` text tokens, then
    ``images`` images (each with its start/end markers), then ``text_after`` text tokens."""

    text_before: int
    images: int = 0
    text_after: int = 3


def tiny_batch(family: str | Family, config: Any, requests: list[TinyRequest], *,
               seed: int = 0) -> dict[str, Any]:
    """Model inputs for a batch of synthetic requests, left-padded with ``PAD`` (the side
    generation needs), built the way each family's processor lays them out.

    Returns the keyword arguments for ``model(**inputs)`` / ``model.generate(**inputs)``.
    """
    import torch

    fam = get_family(family) if isinstance(family, str) else family
    if fam.vision is None and any(r.images for r in requests):
        raise CaptureError(f"family {fam.name!r} is text-only: a tiny request cannot hold "
                           "images")
    gen = torch.Generator().manual_seed(seed)
    builder = _VISION_BUILDERS.get(fam.vision or "text")
    rows, extras = [], []
    for req in requests:
        ids, extra = builder(config, req, gen)
        rows.append(ids)
        extras.append(extra)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, width - len(row):] = torch.tensor(row)
        attention_mask[b, width - len(row):] = 1
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    _add_token_types(fam, config, inputs)
    for key in {k for e in extras for k in e}:
        parts = [e[key] for e in extras if key in e]
        inputs[key] = torch.cat(parts, dim=0)
    return inputs


def _text_tokens(n: int, gen: Any) -> list[int]:
    import torch

    return torch.randint(FIRST_TEXT_ID, VOCAB, (n,), generator=gen).tolist()


def _text_request(config: Any, req: TinyRequest, gen: Any) -> tuple[list[int], dict]:
    return [BOS] + _text_tokens(req.text_before + req.text_after, gen), {}


def _qwen_style(config: Any, req: TinyRequest, gen: Any) -> tuple[list[int], dict]:
    """Qwen-VL / GLM-4V / ERNIE layout: patches flattened to rows, a [t, h, w] grid per
    image, one LLM token per ``merge x merge`` patches."""
    import torch

    vc = config.vision_config
    grid_h, grid_w = 2, 2
    merge = getattr(vc, "spatial_merge_size", 1)
    temporal = getattr(vc, "temporal_patch_size", 1)
    tokens = grid_h * grid_w // (merge * merge)
    start = getattr(config, "vision_start_token_id", None) or config.image_start_token_id
    end = getattr(config, "vision_end_token_id", None) or config.image_end_token_id
    ids = [BOS] + _text_tokens(req.text_before, gen)
    for _ in range(req.images):
        ids += [start] + [IMAGE] * tokens + [end]
    ids += _text_tokens(req.text_after, gen)
    if not req.images:
        return ids, {}
    width = vc.in_channels * vc.patch_size * vc.patch_size * temporal
    pixels = torch.randn((req.images * grid_h * grid_w, width), generator=gen)
    grid = torch.tensor([[1, grid_h, grid_w]] * req.images)
    return ids, {"pixel_values": pixels, "image_grid_thw": grid}


def _tiles(config: Any, req: TinyRequest, gen: Any, tokens: int, start: int | None,
           end: int | None, mask: bool = False) -> tuple[list[int], dict]:
    """Llama 4 / Aria / InternVL layout: one square tile per image, ``tokens`` LLM tokens."""
    import torch

    vc = config.vision_config
    size = vc.image_size[0] if isinstance(vc.image_size, list | tuple) else vc.image_size
    ids = [BOS] + _text_tokens(req.text_before, gen)
    for _ in range(req.images):
        ids += ([start] if start is not None else []) + [IMAGE] * tokens
        ids += [end] if end is not None else []
    ids += _text_tokens(req.text_after, gen)
    if not req.images:
        return ids, {}
    extra = {"pixel_values": torch.randn((req.images, 3, size, size), generator=gen)}
    if mask:
        extra["pixel_mask"] = torch.ones((req.images, size, size), dtype=torch.bool)
    return ids, extra


def _llama4_request(config: Any, req: TinyRequest, gen: Any) -> tuple[list[int], dict]:
    vc = config.vision_config
    patches = (vc.image_size // vc.patch_size) ** 2
    tokens = int(patches * vc.pixel_shuffle_ratio ** 2)
    return _tiles(config, req, gen, tokens, config.boi_token_index, config.eoi_token_index)


def _aria_request(config: Any, req: TinyRequest, gen: Any) -> tuple[list[int], dict]:
    vc = config.vision_config
    patches = (vc.image_size // vc.patch_size) ** 2
    tokens = int(config.projector_patch_to_query_dict[patches])
    return _tiles(config, req, gen, tokens, None, None, mask=True)


def _internvl_request(config: Any, req: TinyRequest, gen: Any) -> tuple[list[int], dict]:
    return _tiles(config, req, gen, int(config.image_seq_length), IMG_START, IMG_END)


_VISION_BUILDERS = {
    "text": _text_request,
    "qwen": _qwen_style,
    "llama4": _llama4_request,
    "aria": _aria_request,
    "internvl": _internvl_request,
}


def _add_token_types(fam: Family, config: Any, inputs: dict[str, Any]) -> None:
    """Add the token-type ids the family's processor would return: ``mm_token_type_ids``
    (0 text, 1 image, 2 video) and, for ERNIE, ``moe_mm_token_type_ids`` (which also counts
    the image start/end markers as vision, as its processor does)."""
    ids = inputs["input_ids"]
    if "mm_token_type_ids" in fam.token_type_inputs:
        types = (ids == IMAGE).long() + 2 * (ids == VIDEO).long()
        inputs["mm_token_type_ids"] = types
    if "moe_mm_token_type_ids" in fam.token_type_inputs:
        vision = (ids == IMAGE) | (ids == VIDEO)
        for marker in (IMG_START, IMG_END, VID_START, VID_END):
            vision |= ids == marker
        inputs["moe_mm_token_type_ids"] = vision.long()
