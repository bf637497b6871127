"""Precision as deployed: FP8 expert GEMMs against BF16 in closed form (compute-bound: the
time scales by the ratio of peaks, fixed costs aside; weight-read-bound: weight bytes
halve), FP8 dispatch bytes per token, and FP8 refused on a GPU without an FP8 peak."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from macssim import MacssimError, TopologyError
from macssim.cluster import LayerRouting, SimOptions, simulate_step
from macssim.cost import PRECISION_PRESETS, Precision
from macssim.cost._precision import fp8_row_bytes
from macssim.cost._roofline import (
    FP8_HALF_EFFICIENCY_FLOPS,
    GROUPED_GEMM,
    KERNEL_FIXED_S,
    attention_s,
    expert_phase_s,
    head_s,
)
from macssim.hardware import GpuSpec, list_topology_presets, load_topology
from macssim.placement import contiguous_placement

FIXED_S = GROUPED_GEMM.fixed_s
N_HALF = GROUPED_GEMM.half_efficiency_rows
# 50 TFLOP/s BF16 and 125 TFLOP/s FP8 reached, 1 TB/s HBM reached
GPU = GpuSpec(kind="test-gpu", bf16_flops_per_s=100e12, hbm_bytes_per_s=2e12,
              memory_bytes=80e9, compute_efficiency=0.5, memory_efficiency=0.5,
              fp8_flops_per_s=250e12)
FAST = dataclasses.replace(GPU, bf16_flops_per_s=1000e12, fp8_flops_per_s=2000e12)
BF16, FP8 = PRECISION_PRESETS["bf16"], PRECISION_PRESETS["fp8-experts"]


def quant_s(rows: float, k: int, hbm: float = 1e12) -> float:
    """FP8 block quantisation of ``rows`` BF16 rows of ``k`` (``fp8_quantise_s``): one
    kernel, each row read in BF16 and written quantised."""
    return KERNEL_FIXED_S + rows * (2 * k + fp8_row_bytes(k)) / hbm


def test_presets_and_fp8_row_bytes():
    assert BF16 == Precision() == SimOptions().precision
    assert FP8 == Precision(experts="fp8", linear="bf16", dispatch="fp8", combine="bf16")
    assert PRECISION_PRESETS["fp8"] == Precision(experts="fp8", linear="fp8", dispatch="fp8")
    assert SimOptions(precision="fp8-experts").precision == FP8
    assert fp8_row_bytes(7168) == 7168 + 4 * 56
    assert fp8_row_bytes(2048) == 2048 + 4 * 16
    assert fp8_row_bytes(1000) == 1000 + 4 * 8          # ⌈1000/128⌉ = 8 scales
    with pytest.raises(MacssimError, match='"combine" must be bf16'):
        Precision(combine="fp8")
    with pytest.raises(MacssimError, match='"experts" must be one of bf16, fp8'):
        Precision(experts="int4")
    with pytest.raises(MacssimError, match='"precision" must be a Precision or one of'):
        SimOptions(precision="fp4")


def test_compute_bound_expert_phase_scales_by_the_ratio_of_peaks(tiny_model):
    """4,096 rows on one expert: compute-bound in both precisions, so everything but the
    fixed kernels and FP8's quantisation of the rows scales by bf16_peak / fp8_peak."""
    h, inter = 1024, 512
    rows = np.array([[4096, 0, 0, 0]])
    bf16 = expert_phase_s(tiny_model, GPU, rows, precision=BF16)[0]
    fp8 = expert_phase_s(tiny_model, GPU, rows, precision=FP8)[0]
    flops = 6 * h * inter * (4096 + N_HALF)
    assert bf16 == pytest.approx(FIXED_S + flops / (100e12 * 0.5), rel=1e-12)
    quant = quant_s(4096, h)
    assert fp8 == pytest.approx(FIXED_S + quant + flops / (250e12 * 0.5), rel=1e-12)
    assert (fp8 - FIXED_S - quant) / (bf16 - FIXED_S) == pytest.approx(100 / 250, rel=1e-12)
    # compute-bound indeed: the memory roofs are far below
    mem_fp8 = (3 * h * inter * 1 + 4096 * (fp8_row_bytes(h) + 2 * h)) / 1e12
    assert mem_fp8 < fp8 - FIXED_S - quant


def test_fp8_compute_efficiency_is_the_share_of_the_fp8_peak_reached(tiny_model):
    """With ``fp8_compute_efficiency`` stated, FP8 GEMMs reach that share of the FP8 peak
    (0.2 of 250 = 50 TFLOP/s, BF16's 0.5 of 100): the compute-bound phase then costs the
    same in both precisions, FP8's quantisation of the rows aside."""
    gpu = dataclasses.replace(GPU, fp8_compute_efficiency=0.2)
    rows = np.array([[4096, 0, 0, 0]])
    flops = 6 * 1024 * 512 * (4096 + N_HALF)
    fp8 = expert_phase_s(tiny_model, gpu, rows, precision=FP8)[0]
    quant = quant_s(4096, 1024)
    assert fp8 == pytest.approx(FIXED_S + quant + flops / (250e12 * 0.2), rel=1e-12)
    assert fp8 - quant == pytest.approx(
        expert_phase_s(tiny_model, gpu, rows, precision=BF16)[0], rel=1e-12)


def test_weight_read_bound_expert_phase_reads_half_the_weight_bytes(tiny_model):
    """One row on each of 8 experts on a fast GPU: bound by the eight weight reads, which
    halve in FP8 (1 byte instead of 2); the row's activation goes in FP8 with its scales
    and comes out in BF16."""
    h, inter = 1024, 512
    rows = np.ones((1, 8), np.int64)
    bf16 = expert_phase_s(tiny_model, FAST, rows, precision=BF16)[0]
    fp8 = expert_phase_s(tiny_model, FAST, rows, precision=FP8)[0]
    weights_bf16, weights_fp8 = 8 * 3 * h * inter * 2, 8 * 3 * h * inter * 1
    assert weights_fp8 * 2 == weights_bf16
    act_bf16, act_fp8 = 8 * (2 * h + 2 * h), 8 * (fp8_row_bytes(h) + 2 * h)
    hbm = 2e12 * 0.5
    assert bf16 == pytest.approx(FIXED_S + (weights_bf16 + act_bf16) / hbm, rel=1e-12)
    assert fp8 == pytest.approx(FIXED_S + quant_s(8, h) + (weights_fp8 + act_fp8) / hbm,
                                rel=1e-12)
    # weight-read-bound: the compute roofs are below
    assert 6 * h * inter * 8 * (64 + N_HALF) / (2000e12 * 0.5) < fp8 - FIXED_S
    assert 6 * h * inter * 8 * (64 + N_HALF) / (1000e12 * 0.5) < bf16 - FIXED_S


def test_linear_precision_moves_attention_projections_and_the_head(tiny_model):
    """``fp8`` (linear layers too) against ``fp8-experts``: compute-bound projections and
    LM head scale by the ratio of peaks once each GEMM's fixed cost, FP8's quantisation of
    its input and the FP8 ramp (n½ FLOPs) are set aside; the attention core does not
    change. tiny_model: h = 1024, q = 8·64, kv = 2·64."""
    h, q = 1024, 8 * 64
    ramp = FP8_HALF_EFFICIENCY_FLOPS / (250e12 * 0.5)
    tokens = np.array([65536.0])
    zero = np.zeros(1)
    full = PRECISION_PRESETS["fp8"]
    proj_bf16 = attention_s(tiny_model, GPU, tokens, zero, zero, FP8)[0]
    proj_fp8 = attention_s(tiny_model, GPU, tokens, zero, zero, full)[0]
    core = 2 * (2 * 64) * 2 * 65536 / 1e12      # new K/V written, BF16: unchanged
    fixed_bf16 = 2 * KERNEL_FIXED_S
    fixed_fp8 = fixed_bf16 + quant_s(65536, h) + quant_s(65536, q) + 2 * ramp
    assert ((proj_fp8 - core - fixed_fp8) / (proj_bf16 - core - fixed_bf16)
            == pytest.approx(100 / 250, rel=1e-12))
    reqs = np.array([4096.0])
    head_fp8 = head_s(tiny_model, GPU, reqs, full)[0] - KERNEL_FIXED_S - quant_s(4096, h) - ramp
    assert (head_fp8 / (head_s(tiny_model, GPU, reqs, FP8)[0] - KERNEL_FIXED_S)
            == pytest.approx(100 / 250, rel=1e-12))


def _step(topo, model, precision, kind="decode"):
    """8 tokens on GPU 0, each to experts 2 and 4 (GPUs 1 and 2): 16 (token, GPU) copies."""
    ids = np.tile([2, 4], (8, 1))
    layers = [LayerRouting(ids, np.ones_like(ids, bool))] * model.num_moe_layers
    return simulate_step(topo, model, contiguous_placement(model.num_experts, topo.num_gpus),
                         kind, token_gpu=np.zeros(8, np.int64), position=np.arange(8),
                         modality=np.zeros(8, np.uint8), layers=layers,
                         request_id=np.zeros(8, np.int64),
                         options=SimOptions(router_s=0.0, precision=precision))


@pytest.mark.parametrize("engine", ["nccl", "deepep-normal", "deepep-ll", "ideal"])
def test_dispatch_bytes_per_token_copy(topo4, tiny_model, engine):
    """FP8 dispatch: h + 4·⌈h/128⌉ bytes per token copy, BF16: 2h, whatever the engine;
    FP8 dispatch alone needs no FP8 tensor cores (topo4's GPU has none)."""
    topo = dataclasses.replace(topo4, alltoall=engine)
    h = tiny_model.hidden_size
    bf16 = _step(topo, tiny_model, BF16)
    fp8 = _step(topo, tiny_model, Precision(dispatch="fp8"))
    assert bf16.layers[0].dispatch_bytes == 16 * 2 * h
    assert fp8.layers[0].dispatch_bytes == 16 * (h + 4 * 8)
    sent = [r.dispatch_sent_bytes for r in fp8.gpu_layers if r.layer == 0]
    assert sent == [16 * fp8_row_bytes(h), 0, 0, 0]
    assert fp8.layers[0].moe_latency_s < bf16.layers[0].moe_latency_s


def test_fp8_needs_the_gpus_fp8_peak(tmp_path, topo4, tiny_model):
    source = load_topology("8xH100").source
    text = "".join(line for line in open(source) if "fp8_flops_per_s" not in line)
    path = tmp_path / "a100ish.yaml"
    path.write_text(text)
    topo = load_topology(path)
    assert topo.gpu.fp8_flops_per_s is None
    model = dataclasses.replace(tiny_model, num_experts=16)
    for name in ("fp8-experts", "fp8"):
        with pytest.raises(TopologyError,
                           match=r'a100ish\.yaml: precision .* "gpu\.fp8_flops_per_s" is not '
                                 r"set for H100-SXM5-80GB"):
            _step(topo, model, name)
    with pytest.raises(TopologyError, match=r"topology '1x4test'.*gpu\.fp8_flops_per_s"):
        _step(topo4, tiny_model, "fp8-experts")
    _step(topo, model, "bf16")                       # BF16 needs nothing new
    path.write_text(text.replace("bf16_flops_per_s: 989.0e+12",
                                 "bf16_flops_per_s: 989.0e+12\n  fp8_flops_per_s: -1"))
    with pytest.raises(TopologyError, match=r'"gpu\.fp8_flops_per_s" must be a finite number'):
        load_topology(path)


def test_presets_carry_the_datasheet_fp8_peak():
    for name in list_topology_presets():
        gpu = load_topology(name).gpu
        assert gpu.fp8_flops_per_s == 1979e12 == 2 * gpu.bf16_flops_per_s + 1e12, name


def test_fp8_experts_speed_up_a_tiny_prefill_fp8_linear_does_not(make_topo, tiny_model):
    """8 tokens on tiny_model: the expert phase pays one quantisation kernel (3 µs) and
    halves the weight reads of its active experts, a net gain; FP8 linear layers add a
    quantisation kernel before each projection and the head, each saving less than its
    3 µs (a 1024 x 640 QKV weight halved: 0.66 µs at 1 TB/s), a net loss."""
    topo = make_topo(1, 4)
    topo = dataclasses.replace(topo, gpu=GPU)
    times = [_step(topo, tiny_model, p, kind="prefill").step_latency_s
             for p in ("bf16", "fp8-experts", "fp8")]
    assert times[1] < times[0] < times[2]
