"""How long each GPU computes: a roofline per kernel group, from FLOPs and HBM bytes.

Every compute phase is ``max(FLOPs / (peak · compute_efficiency), bytes / (HBM ·
memory_efficiency))``; a phase made of kernels with different bottlenecks (projections
that read weights, attention that reads the KV cache) is the sum of their rooflines. The
FLOP and byte counts are the textbook ones for a decoder layer; each function says which.
All functions take and return per-GPU arrays ([G]), so that a measured kernel table could
replace any one of them.
"""

from __future__ import annotations

import numpy as np

from macssim.cluster._topology import GpuSpec
from macssim.trace import ModelFacts

__all__ = [
    "roofline_s",
    "attention_s",
    "dense_mlp_s",
    "expert_s",
    "shared_experts_s",
    "vision_s",
    "head_s",
]


def roofline_s(flops: np.ndarray, nbytes: np.ndarray, gpu: GpuSpec) -> np.ndarray:
    """[G] seconds: the slower of computing ``flops`` and moving ``nbytes`` through HBM."""
    return np.maximum(np.asarray(flops, dtype=np.float64) / gpu.achievable_flops_per_s,
                      np.asarray(nbytes, dtype=np.float64) / gpu.achievable_hbm_bytes_per_s)


def attention_s(model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray, kv_read: np.ndarray,
                context_sum: np.ndarray) -> np.ndarray:
    """One decoder layer's attention block on each GPU.

    Projections (QKV and output, a GEMM reading the layer's attention weights once per
    GPU that has tokens): ``2·h·(q + 2·kv) + 2·q·h`` FLOPs per token. Attention core (QKᵀ
    and PV): ``4·q·c`` FLOPs for a token attending to ``c`` positions, reading each of its
    request's cached positions once (K and V: ``2·kv`` elements each) and writing its own.
    Activations: the token's hidden state in and out. Here h = hidden size, q = heads ×
    head_dim, kv = KV heads × head_dim.

    Args:
        tokens: [G] tokens on each GPU.
        kv_read: [G] cached positions read, summed over the GPU's requests (a request's
            context length, once per request).
        context_sum: [G] sum over the GPU's tokens of the positions each attends to.
    """
    h, bpe = model.hidden_size, model.bytes_per_element
    q = model.num_attention_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    has = tokens > 0
    proj_flops = (2 * h * (q + 2 * kv) + 2 * q * h) * tokens
    proj_bytes = has * (h * (q + 2 * kv) + q * h) * bpe + 2 * h * bpe * tokens
    core_flops = 4 * q * context_sum
    core_bytes = 2 * kv * bpe * (kv_read + tokens)
    return roofline_s(proj_flops, proj_bytes, gpu) + roofline_s(core_flops, core_bytes, gpu)


def dense_mlp_s(model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray) -> np.ndarray:
    """The SwiGLU MLP of a dense (non-MoE) decoder layer: ``6·h·I`` FLOPs per token,
    weights ``3·h·I`` elements read once per GPU with tokens."""
    inter = model.dense_intermediate_size
    if inter <= 0:
        return np.zeros(tokens.shape)
    return _swiglu_s(model, gpu, tokens, (tokens > 0) * 1.0, inter)


def expert_s(model: ModelFacts, gpu: GpuSpec, assignments: np.ndarray,
             active_experts: np.ndarray) -> np.ndarray:
    """Local routed experts: ``2·3·h·I`` FLOPs per kept token-expert assignment, the
    weights (``3·h·I`` elements) of every active expert read from HBM, each assignment's
    token read and its output written.

    Args:
        assignments: [G] kept token-expert assignments computed on each GPU.
        active_experts: [G] experts (physical slots) on each GPU with at least one.
    """
    return _swiglu_s(model, gpu, assignments, active_experts, model.expert_intermediate_size)


def shared_experts_s(model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray) -> np.ndarray:
    """Shared (always-on) experts, run by every GPU on its own tokens, no dispatch."""
    if model.num_shared_experts <= 0:
        return np.zeros(tokens.shape)
    inter = model.shared_intermediate_size or model.expert_intermediate_size
    n = model.num_shared_experts
    return _swiglu_s(model, gpu, tokens * n, (tokens > 0) * float(n), inter)


def _swiglu_s(model: ModelFacts, gpu: GpuSpec, rows: np.ndarray, weight_sets: np.ndarray,
              inter: int) -> np.ndarray:
    h, bpe = model.hidden_size, model.bytes_per_element
    flops = 2 * 3 * h * inter * np.asarray(rows, dtype=np.float64)
    nbytes = 3 * h * inter * bpe * np.asarray(weight_sets, dtype=np.float64) + 2 * h * bpe * rows
    return roofline_s(flops, nbytes, gpu)


def vision_s(model: ModelFacts, gpu: GpuSpec, vision_tokens: np.ndarray) -> np.ndarray:
    """The vision encoder on each GPU's image and video tokens (prefill only):
    ``vision_flops_per_token`` FLOPs each, compute-bound (its weights, a few hundred MB,
    are small beside the FLOPs of a batch of images)."""
    flops = model.vision_flops_per_token * np.asarray(vision_tokens, dtype=np.float64)
    return flops / gpu.achievable_flops_per_s


def head_s(model: ModelFacts, gpu: GpuSpec, requests: np.ndarray) -> np.ndarray:
    """The LM head: one row of logits per request (its last token), ``2·h·vocab`` FLOPs,
    reading the ``vocab × h`` embedding matrix once per GPU with requests."""
    h, bpe = model.hidden_size, model.bytes_per_element
    flops = 2.0 * h * model.vocab_size * requests
    nbytes = (requests > 0) * float(model.vocab_size * h * bpe) + 2 * h * bpe * requests
    return roofline_s(flops, nbytes, gpu)
