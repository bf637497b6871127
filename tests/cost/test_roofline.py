"""One GEMM's cost (``gemm_s``) and FP8 activation quantisation in closed form: a tiny GEMM
is its fixed kernel cost plus its bytes, a large one tends to FLOPs over the achieved
peak, FP8 pays its quantisation kernels and the FP8 ramp; the fitted constants are pinned
to their documented values."""

from __future__ import annotations

import numpy as np
import pytest

from macssim import MacssimError
from macssim.cost._roofline import (
    FP8_HALF_EFFICIENCY_FLOPS,
    FP8_QUANT_KERNELS,
    KERNEL_FIXED_S,
    fp8_quantise_s,
    gemm_s,
)
from macssim.hardware import GpuSpec

# 50 TFLOP/s BF16 and 125 TFLOP/s FP8 reached, 1 TB/s HBM reached.
GPU = GpuSpec(kind="test-gpu", bf16_flops_per_s=100e12, hbm_bytes_per_s=2e12,
              memory_bytes=80e9, compute_efficiency=0.5, memory_efficiency=0.5,
              fp8_flops_per_s=250e12)
BF16_S, FP8_S, HBM = 50e12, 125e12, 1e12


def test_constants_are_the_documented_fits():
    assert KERNEL_FIXED_S == 3e-6
    assert FP8_QUANT_KERNELS == {"block": 1, "tensor": 3}
    assert FP8_HALF_EFFICIENCY_FLOPS == 1e9


def test_tiny_gemm_is_the_fixed_cost_plus_its_bytes():
    # m = 1, 256 x 256 weight: bytes (1·256 + 256·256 + 1·256)·2, memory-bound.
    nbytes = (256 + 256 * 256 + 256) * 2
    assert 2 * 256 * 256 / BF16_S < nbytes / HBM
    assert gemm_s(GPU, np.array([1.0]), 256, 256)[0] == pytest.approx(
        KERNEL_FIXED_S + nbytes / HBM)
    # at that size the fixed cost dominates: > 80 % of the time
    assert KERNEL_FIXED_S / gemm_s(GPU, np.array([1.0]), 256, 256)[0] > 0.8


def test_no_rows_no_kernel():
    assert gemm_s(GPU, np.array([0.0, 0.0]), 4096, 4096).tolist() == [0.0, 0.0]
    assert gemm_s(GPU, np.array([0.0]), 4096, 4096, "fp8").tolist() == [0.0]
    assert fp8_quantise_s(GPU, np.array([0.0]), 4096).tolist() == [0.0]


def test_large_gemm_tends_to_the_compute_roof():
    m = np.array([4096.0, 65536.0])
    flops = 2 * m * 8192 * 8192
    got = gemm_s(GPU, m, 8192, 8192)
    assert got == pytest.approx(KERNEL_FIXED_S + flops / BF16_S)
    assert got[1] / (flops[1] / BF16_S) == pytest.approx(1.0, rel=1e-4)  # 3 µs of 0.18 s


def test_fp8_quantisation_term():
    k, rows = 1000, np.array([3.0])
    row = 2 * k + k + 4 * 8                       # read BF16, write FP8 + ⌈1000/128⌉ scales
    assert fp8_quantise_s(GPU, rows, k)[0] == pytest.approx(1 * 3e-6 + 3 * row / HBM)
    assert fp8_quantise_s(GPU, rows, k, scaling="tensor")[0] == pytest.approx(
        3 * 3e-6 + 3 * row / HBM)
    with pytest.raises(MacssimError, match="scaling must be one of block, tensor"):
        fp8_quantise_s(GPU, rows, k, scaling="channel")


def test_fp8_gemm_is_quantisation_plus_fixed_cost_plus_ramped_roofline():
    m, n, k = 8192.0, 4096, 4096
    flops = 2 * m * n * k
    quant = 3e-6 + m * (2 * k + k + 4 * 32) / HBM
    compute = (flops + 1e9) / FP8_S               # above the memory roof at this size
    assert (k * n + m * (k + 4 * 32) + 2 * m * n) / HBM < compute
    assert gemm_s(GPU, np.array([m]), n, k, "fp8")[0] == pytest.approx(
        quant + 3e-6 + compute)
    # tiny: memory-bound, the weight read at one byte per element
    nbytes = 256 * 256 + (256 + 4 * 2) + 2 * 256
    assert gemm_s(GPU, np.array([1.0]), 256, 256, "fp8")[0] == pytest.approx(
        3e-6 + (2 * 256 + 256 + 8) / HBM + 3e-6 + max((2 * 256 * 256 + 1e9) / FP8_S,
                                                      nbytes / HBM))
