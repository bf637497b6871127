"""How long each GPU computes: a roofline per kernel group, from FLOPs and HBM bytes.

Every compute phase is ``max(FLOPs / (peak · compute_efficiency), bytes / (HBM ·
memory_efficiency))``; a phase made of kernels with different bottlenecks (projections
that read weights, attention that reads the KV cache) is the sum of their rooflines. The
FLOP and byte counts are the textbook ones for a decoder layer; each function says which.
All functions return per-GPU arrays ([G]) and take per-GPU arrays (``expert_phase_s``: the
rows of each of a GPU's expert slots, [G, S]), so that a measured kernel table could
replace any one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from macssim._errors import MacssimError
from macssim.cost._precision import (
    Precision,
    achievable_flops_per_s,
    row_bytes,
    weight_bytes_per_element,
)
from macssim.hardware import GpuSpec
from macssim.trace import ModelFacts

__all__ = [
    "roofline_s",
    "attention_s",
    "dense_mlp_s",
    "GroupedGemm",
    "GROUPED_GEMM",
    "expert_phase_s",
    "padded_rows",
    "shared_experts_s",
    "vision_s",
    "head_s",
]


_BF16 = Precision()


def roofline_s(flops: np.ndarray, nbytes: np.ndarray, gpu: GpuSpec, dtype: str = "bf16"
               ) -> np.ndarray:
    """[G] seconds: the slower of computing ``flops`` (at the ``dtype`` tensor-core peak:
    ``bf16`` or ``fp8``) and moving ``nbytes`` through HBM."""
    peak = achievable_flops_per_s(gpu, dtype)
    return np.maximum(np.asarray(flops, dtype=np.float64) / peak,
                      np.asarray(nbytes, dtype=np.float64) / gpu.achievable_hbm_bytes_per_s)


def attention_s(model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray, kv_read: np.ndarray,
                context_sum: np.ndarray, precision: Precision = _BF16) -> np.ndarray:
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
        precision: ``precision.linear`` is the projections' (FP8: FP8 peak, 1-byte
            weights, each token's row read quantised); the core stays in the model's dtype.
    """
    h, bpe = model.hidden_size, model.bytes_per_element
    dt = precision.linear
    wb = weight_bytes_per_element(model, dt)
    q = model.num_attention_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    has = tokens > 0
    proj_flops = (2 * h * (q + 2 * kv) + 2 * q * h) * tokens
    proj_bytes = (has * (h * (q + 2 * kv) + q * h) * wb
                  + (row_bytes(model, dt) + h * bpe) * tokens)
    core_flops = 4 * q * context_sum
    core_bytes = 2 * kv * bpe * (kv_read + tokens)
    return (roofline_s(proj_flops, proj_bytes, gpu, dt)
            + roofline_s(core_flops, core_bytes, gpu))


def dense_mlp_s(model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray,
                precision: Precision = _BF16) -> np.ndarray:
    """The SwiGLU MLP of a dense (non-MoE) decoder layer: ``6·h·I`` FLOPs per token,
    weights ``3·h·I`` elements read once per GPU with tokens (``precision.linear``)."""
    inter = model.dense_intermediate_size
    if inter <= 0:
        return np.zeros(tokens.shape)
    return _swiglu_s(model, gpu, tokens, (tokens > 0) * 1.0, inter, precision.linear)


@dataclass(frozen=True)
class GroupedGemm:
    """How a GPU's routed-expert phase is costed: a grouped-GEMM MoE kernel (vLLM/SGLang
    fused MoE, CUTLASS grouped GEMM) that pads each expert's rows to a tile, runs experts
    with few rows below the GPU's compute efficiency, and pays fixed per-layer kernels.

    Every figure is an assumption to be replaced by a measured kernel table (the
    aiconfigurator per-shape tables named in notes/fidelity.md); ``docs/cluster.md`` gives
    the sources.
    """

    tile_rows: int = 64
    """M tile each expert's rows are padded to. vLLM's Triton fused MoE pads every expert's
    rows to ``BLOCK_SIZE_M`` (``moe_align_block_size``), 64 in its default config for
    batches larger than the expert count (16 for tiny decode batches); SGLang's kernel is a
    copy of it. CUTLASS/DeepGEMM Hopper grouped GEMMs align to 128."""
    half_efficiency_rows: float = 128.0
    """Hockney's n½ for one expert's GEMM: an expert with ``m`` padded rows reaches
    ``compute_efficiency · m / (m + n½)`` of the GPU's peak. Equivalent to every active
    expert paying n½ rows' worth of extra compute (pipeline fill, tile scheduling, wave
    quantisation). An assumption: one 128-row tile at half the large-GEMM efficiency; the
    measured fused-MoE figures of notes/fidelity.md (26 % of peak at ~256 rows per expert,
    39 % at ~1024) fit n½ ≈ 200 with a lower ceiling (~0.47)."""
    fixed_kernels: int = 5
    """Kernels of the phase besides routing (which is ``SimOptions.router_s``): align and
    permute, gate-up GEMM, SwiGLU activation, down GEMM, finalize/unpermute (vLLM's
    ``fused_experts``: ``moe_align_block_size``, two ``fused_moe_kernel``, ``silu_and_mul``,
    ``moe_sum``)."""
    kernel_fixed_s: float = 3e-6
    """Fixed cost of each of those kernels (launch and ramp): the ~3–4 µs intercept of
    measured H100 GEMM times (notes/fidelity.md, "Plain GEMMs"), lower end."""

    def __post_init__(self) -> None:
        if not (self.tile_rows >= 1 and self.half_efficiency_rows >= 0
                and self.fixed_kernels >= 0 and self.kernel_fixed_s >= 0):
            raise MacssimError(f"GroupedGemm: tile_rows >= 1 and the other fields >= 0, got "
                               f"{self!r}")

    @property
    def fixed_s(self) -> float:
        """Per-layer fixed cost of the phase on every GPU."""
        return self.fixed_kernels * self.kernel_fixed_s


GROUPED_GEMM = GroupedGemm()
"""The default expert-phase kernel model."""


def padded_rows(tokens_per_expert: np.ndarray, tile_rows: int) -> np.ndarray:
    """Each expert's rows rounded up to a multiple of ``tile_rows`` (0 stays 0)."""
    rows = np.asarray(tokens_per_expert, dtype=np.int64)
    return -(-rows // tile_rows) * tile_rows


def expert_phase_s(model: ModelFacts, gpu: GpuSpec, tokens_per_expert: np.ndarray,
                   kernel: GroupedGemm = GROUPED_GEMM, precision: Precision = _BF16
                   ) -> np.ndarray:
    """Local routed experts on each GPU, costed per expert.

    For a GPU whose expert slots hold ``m_e`` kept rows (token-expert assignments), with
    ``p_e`` = ``m_e`` padded to ``kernel.tile_rows`` and h, I, b the hidden size, expert
    intermediate size and bytes per element::

        compute = Σ_e 6·h·I·p_e / (peak · compute_efficiency · p_e / (p_e + n½))
        memory  = (3·h·I·w · #{e: m_e > 0} + (r + h·b) · Σ_e m_e) / (HBM · memory_efficiency)
        time    = fixed_kernels · kernel_fixed_s + max(compute, memory)

    In BF16 (``precision.experts``) the peak is ``bf16_flops_per_s``, w = b and a row read
    is r = h·b; in FP8 the peak is ``fp8_flops_per_s``, w = 1 and r = h + 4·⌈h/128⌉ (the
    row quantised, one fp32 scale per 128 elements); outputs are written in the model's
    dtype either way. The fixed kernels do not scale with precision.

    FLOPs use the padded rows; only active experts (``m_e > 0``) read their weights and
    pay compute; each real row's token is read and its output written. A GPU with no rows
    pays the fixed cost only (in EP every rank launches every layer's kernels). The two
    roofs are taken over the whole grouped kernel, not per expert: its tiles of all
    experts share the GPU's SMs and HBM at once.

    Args:
        tokens_per_expert: [G, S] kept rows of each of the GPU's S expert slots (pad a GPU
            with fewer slots with zeros: an empty slot costs nothing).
        kernel: the kernel model's constants.
        precision: ``precision.experts`` is the GEMMs' dtype.

    Returns:
        [G] seconds.
    """
    rows = np.asarray(tokens_per_expert)
    if rows.ndim != 2 or (rows.size and rows.min() < 0):
        raise MacssimError(f"expert_phase_s: tokens_per_expert must be a [G, S] array of "
                           f"counts >= 0, got shape {list(rows.shape)}")
    h, inter, bpe = model.hidden_size, model.expert_intermediate_size, model.bytes_per_element
    dt = precision.experts
    padded = padded_rows(rows, kernel.tile_rows).astype(np.float64)
    active = rows > 0
    peak = achievable_flops_per_s(gpu, dt)
    # FLOPs / (peak · eff(p)) = 6·h·I·(p + n½) / peak for an active expert.
    compute = (6.0 * h * inter * (padded + kernel.half_efficiency_rows * active)).sum(
        axis=1) / peak
    nbytes = (3.0 * h * inter * weight_bytes_per_element(model, dt) * active.sum(axis=1)
              + (row_bytes(model, dt) + h * bpe) * rows.sum(axis=1, dtype=np.float64))
    memory = nbytes / gpu.achievable_hbm_bytes_per_s
    return kernel.fixed_s + np.maximum(compute, memory)


def shared_experts_s(model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray,
                     precision: Precision = _BF16) -> np.ndarray:
    """Shared (always-on) experts, run by every GPU on its own tokens, no dispatch
    (``precision.experts``)."""
    if model.num_shared_experts <= 0:
        return np.zeros(tokens.shape)
    inter = model.shared_intermediate_size or model.expert_intermediate_size
    n = model.num_shared_experts
    return _swiglu_s(model, gpu, tokens * n, (tokens > 0) * float(n), inter,
                     precision.experts)


def _swiglu_s(model: ModelFacts, gpu: GpuSpec, rows: np.ndarray, weight_sets: np.ndarray,
              inter: int, dtype: str = "bf16") -> np.ndarray:
    h, bpe = model.hidden_size, model.bytes_per_element
    flops = 2 * 3 * h * inter * np.asarray(rows, dtype=np.float64)
    nbytes = (3 * h * inter * weight_bytes_per_element(model, dtype)
              * np.asarray(weight_sets, dtype=np.float64)
              + (row_bytes(model, dtype) + h * bpe) * rows)
    return roofline_s(flops, nbytes, gpu, dtype)


def vision_s(model: ModelFacts, gpu: GpuSpec, vision_tokens: np.ndarray) -> np.ndarray:
    """The vision encoder on each GPU's image and video tokens (prefill only):
    ``vision_flops_per_token`` FLOPs each, compute-bound (its weights, a few hundred MB,
    are small beside the FLOPs of a batch of images)."""
    flops = model.vision_flops_per_token * np.asarray(vision_tokens, dtype=np.float64)
    return flops / gpu.achievable_flops_per_s


def head_s(model: ModelFacts, gpu: GpuSpec, requests: np.ndarray,
           precision: Precision = _BF16) -> np.ndarray:
    """The LM head: one row of logits per request (its last token), ``2·h·vocab`` FLOPs,
    reading the ``vocab × h`` embedding matrix once per GPU with requests
    (``precision.linear``)."""
    h, bpe = model.hidden_size, model.bytes_per_element
    dt = precision.linear
    flops = 2.0 * h * model.vocab_size * requests
    nbytes = ((requests > 0) * float(model.vocab_size * h * weight_bytes_per_element(model, dt))
              + (row_bytes(model, dt) + h * bpe) * requests)
    return roofline_s(flops, nbytes, gpu, dt)
