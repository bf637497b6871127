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
    fp8_row_bytes,
    row_bytes,
    weight_bytes_per_element,
)
from macssim.hardware import GpuSpec
from macssim.trace import ModelFacts

__all__ = [
    "attention_core_s",
    "KERNEL_FIXED_S",
    "FP8_HALF_EFFICIENCY_FLOPS",
    "FP8_QUANT_KERNELS",
    "roofline_s",
    "gemm_s",
    "fp8_quantise_s",
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

KERNEL_FIXED_S = 3e-6
"""Fixed cost of one GEMM (or elementwise) kernel: launch, prologue, pipeline fill and the
tail of the last wave. Fitted to the BF16 rows of NVIDIA's measured H100 GEMM table
(aiconfigurator-core 0.12.0, TRT-LLM 1.3.0rc20 ``torch_flow``; m 1-16384, n and k
768-16384): 3 µs added to the roofline brings the median |error| at m <= 1024 from 19-20 %
to 5-9 % (2 µs: 7-11 %, 4 µs: 5-7 % but worse above m = 1024); an 768 x 768 GEMM takes
3.6-3.8 µs whatever m <= 64. A tile/wave-quantisation term (CTAs of 128 x 128 or 64 x 128
rounded up to full waves of 132 SMs) fits those rows worse (cuBLAS picks its tiles and
split-K per shape), so there is none."""

FP8_QUANT_KERNELS = {"block": 1, "tensor": 3}
"""Kernels that quantise a GEMM's BF16 activation to FP8 before it runs. ``block`` (one
fp32 scale per 128 elements of a row: DeepSeek-V3's recipe, what macssim's ``Precision``
fp8 means): one pass, each row's groups scaled on their own. ``tensor`` (one dynamic scale
for the tensor): the global amax must be known before any element is scaled, so a
reduction, the scale, then the quantise pass. The count is fitted to the small-m rows of
the measured H100 GEMM table (m <= 16: the per-tensor FP8 GEMM takes ~13 µs at 768 x 768
against ~5 µs for block FP8 and ~3.7 µs for BF16: 3 and 1 extra kernels of
``KERNEL_FIXED_S``)."""

FP8_HALF_EFFICIENCY_FLOPS = 1e9
"""Hockney's n½ in FLOPs for an FP8 GEMM: one of F FLOPs reaches ``fp8_compute_efficiency
· F / (F + n½)`` of the FP8 peak (a ramp the fp8 kernels have and the BF16 ones do not
show: at m >= 2048 the measured FP8 GEMMs reach 25-40 % of the FP8 peak below 7e10 FLOPs,
53-68 % above 7e10). Fitted jointly with ``fp8_compute_efficiency`` = 0.50 on the FP8 and
block-FP8 rows of the measured H100 GEMM table (docs/validation.md)."""


def roofline_s(flops: np.ndarray, nbytes: np.ndarray, gpu: GpuSpec, dtype: str = "bf16"
               ) -> np.ndarray:
    """[G] seconds: the slower of computing ``flops`` (at the ``dtype`` tensor-core peak:
    ``bf16`` or ``fp8``) and moving ``nbytes`` through HBM. No fixed cost: the bound a
    group of kernels cannot beat (``gemm_s`` adds what one kernel costs besides)."""
    peak = achievable_flops_per_s(gpu, dtype)
    return np.maximum(np.asarray(flops, dtype=np.float64) / peak,
                      np.asarray(nbytes, dtype=np.float64) / gpu.achievable_hbm_bytes_per_s)


def fp8_quantise_s(gpu: GpuSpec, rows: np.ndarray, k: int, in_bytes: float = 2.0,
                   scaling: str = "block") -> np.ndarray:
    """Quantising ``rows`` activation rows of ``k`` elements to FP8 before a GEMM: the
    ``FP8_QUANT_KERNELS[scaling]`` kernels' fixed cost (when there are rows) plus reading
    each row in its dtype (``in_bytes`` per element) and writing it quantised
    (``fp8_row_bytes(k)``: k bytes and one fp32 scale per 128), HBM-bound."""
    if scaling not in FP8_QUANT_KERNELS:
        raise MacssimError(f"fp8_quantise_s: scaling must be one of "
                           f"{', '.join(FP8_QUANT_KERNELS)}, got {scaling!r}")
    rows = np.asarray(rows, dtype=np.float64)
    nbytes = rows * (k * in_bytes + fp8_row_bytes(k))
    return ((rows > 0) * (FP8_QUANT_KERNELS[scaling] * KERNEL_FIXED_S)
            + nbytes / gpu.achievable_hbm_bytes_per_s)


def gemm_s(gpu: GpuSpec, m: np.ndarray, n: int, k: int, dtype: str = "bf16", *,
           act_bytes: float = 2.0, fp8_scaling: str = "block") -> np.ndarray:
    """One GEMM ``[m, k] x [k, n]`` (m rows of activations, a ``k x n`` weight), seconds::

        time = KERNEL_FIXED_S + max(FLOPs / achieved peak, bytes / (HBM · memory_efficiency))

    for every m > 0 (m = 0: no kernel, 0 s). FLOPs = 2·m·n·k. Bytes: the weight (k·n
    elements, read once), the input rows and the output rows (``act_bytes`` per element).
    BF16: the BF16 peak times ``compute_efficiency``, weights in ``act_bytes`` too. FP8: the
    input is first quantised (``fp8_quantise_s``, ``fp8_scaling``), the GEMM reads it as
    ``fp8_row_bytes(k)`` per row and 1-byte weights, writes its output in ``act_bytes``,
    and reaches ``fp8_compute_efficiency · F / (F + FP8_HALF_EFFICIENCY_FLOPS)`` of the FP8
    peak. The constants are fitted to NVIDIA's measured H100 GEMM table
    (docs/validation.md, docs/cluster.md)."""
    m = np.asarray(m, dtype=np.float64)
    has = m > 0
    sets = has * 1.0
    flops = 2.0 * m * n * k
    if dtype == "fp8":
        nbytes = sets * k * n + m * fp8_row_bytes(k) + m * n * act_bytes
        peak = achievable_flops_per_s(gpu, "fp8")
        compute = (flops + has * FP8_HALF_EFFICIENCY_FLOPS) / peak
        pre = fp8_quantise_s(gpu, m, k, act_bytes, fp8_scaling)
    else:
        nbytes = (sets * k * n + m * k + m * n) * act_bytes
        compute = flops / achievable_flops_per_s(gpu, dtype)
        pre = 0.0
    memory = nbytes / gpu.achievable_hbm_bytes_per_s
    return pre + has * KERNEL_FIXED_S + np.maximum(compute, memory)


def attention_s(model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray, kv_read: np.ndarray,
                context_sum: np.ndarray, precision: Precision = _BF16) -> np.ndarray:
    """One decoder layer's attention block on each GPU.

    Projections: two GEMMs (``gemm_s``: fixed cost, roofline), QKV ``[t, h] x [h, q + 2·kv]``
    and output ``[t, q] x [q, h]``, each reading its weights once per GPU that has tokens.
    Attention core (QKᵀ and PV): ``4·q·c`` FLOPs for a token attending to ``c`` positions,
    reading each of its request's cached positions once (K and V: ``2·kv`` elements each)
    and writing its own (a roofline, no fixed cost). Here h = hidden size, q = heads ×
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
    q = model.num_attention_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    proj = (gemm_s(gpu, tokens, q + 2 * kv, h, dt, act_bytes=bpe)
            + gemm_s(gpu, tokens, h, q, dt, act_bytes=bpe))
    return proj + attention_core_s(model, gpu, tokens, kv_read, context_sum)


def attention_core_s(model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray, kv_read: np.ndarray,
                     context_sum: np.ndarray) -> np.ndarray:
    """The attention core alone (QKᵀ, PV, KV-cache reads and writes; ``attention_s``'s
    second term), in the model's dtype: what a backend with measured projections but no
    attention table still takes from the roofline."""
    bpe = model.bytes_per_element
    q = model.num_attention_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    core_flops = 4.0 * q * np.asarray(context_sum, dtype=np.float64)
    core_bytes = 2.0 * kv * bpe * (np.asarray(kv_read, dtype=np.float64) + tokens)
    return roofline_s(core_flops, core_bytes, gpu)


def dense_mlp_s(model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray,
                precision: Precision = _BF16) -> np.ndarray:
    """The SwiGLU MLP of a dense (non-MoE) decoder layer (``precision.linear``): two GEMMs
    (``gemm_s``), gate-up ``[t, h] x [h, 2·I]`` and down ``[t, I] x [I, h]``, ``6·h·I``
    FLOPs per token, weights read once per GPU with tokens."""
    inter = model.dense_intermediate_size
    if inter <= 0:
        return np.zeros(tokens.shape)
    return _swiglu_s(model, gpu, tokens, inter, precision.linear)


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
    kernel_fixed_s: float = KERNEL_FIXED_S
    """Fixed cost of each of those kernels (launch and ramp): ``KERNEL_FIXED_S``, fitted to
    the measured H100 GEMM table."""

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
        time    = fixed_kernels · kernel_fixed_s [+ FP8 quantisation] + max(compute, memory)

    In BF16 (``precision.experts``) the peak is ``bf16_flops_per_s``, w = b and a row read
    is r = h·b; in FP8 the peak is ``fp8_flops_per_s``, w = 1 and r = h + 4·⌈h/128⌉ (the
    row quantised, one fp32 scale per 128 elements); outputs are written in the model's
    dtype either way. In FP8 the rows are first quantised (``fp8_quantise_s``, block
    scaling: one more kernel and a read and write of each row); the intermediate's
    quantisation is taken as fused into the activation kernel. The fixed kernels do not
    scale with precision.

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
    quant = (fp8_quantise_s(gpu, rows.sum(axis=1, dtype=np.float64), h, bpe)
             if dt == "fp8" else 0.0)
    return kernel.fixed_s + quant + np.maximum(compute, memory)


def shared_experts_s(model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray,
                     precision: Precision = _BF16) -> np.ndarray:
    """Shared (always-on) experts, run by every GPU on its own tokens, no dispatch
    (``precision.experts``): n shared experts of intermediate size I as one SwiGLU MLP of
    intermediate n·I (how engines fuse them), two ``gemm_s``."""
    if model.num_shared_experts <= 0:
        return np.zeros(tokens.shape)
    inter = model.shared_intermediate_size or model.expert_intermediate_size
    return _swiglu_s(model, gpu, tokens, inter * model.num_shared_experts, precision.experts)


def _swiglu_s(model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray, inter: int,
              dtype: str = "bf16") -> np.ndarray:
    h, bpe = model.hidden_size, model.bytes_per_element
    return (gemm_s(gpu, tokens, 2 * inter, h, dtype, act_bytes=bpe)
            + gemm_s(gpu, tokens, h, inter, dtype, act_bytes=bpe))


def vision_s(model: ModelFacts, gpu: GpuSpec, vision_tokens: np.ndarray) -> np.ndarray:
    """The vision encoder on each GPU's image and video tokens (prefill only):
    ``vision_flops_per_token`` FLOPs each, compute-bound (its weights, a few hundred MB,
    are small beside the FLOPs of a batch of images)."""
    flops = model.vision_flops_per_token * np.asarray(vision_tokens, dtype=np.float64)
    return flops / gpu.achievable_flops_per_s


def head_s(model: ModelFacts, gpu: GpuSpec, requests: np.ndarray,
           precision: Precision = _BF16) -> np.ndarray:
    """The LM head: one row of logits per request (its last token), one ``gemm_s``
    ``[r, h] x [h, vocab]`` reading the ``vocab × h`` embedding matrix once per GPU with
    requests (``precision.linear``)."""
    return gemm_s(gpu, requests, model.vocab_size, model.hidden_size, precision.linear,
                  act_bytes=model.bytes_per_element)
