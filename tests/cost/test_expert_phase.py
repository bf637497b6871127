"""The routed-expert phase costed per expert (a grouped GEMM): a closed form for one hot
expert against an even spread of the same rows, and the invariants — monotone in every
expert's rows, an idle GPU pays the fixed kernels only, one row costs a whole tile."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from macssim.cluster import LayerRouting
from macssim.cluster._load import ExpertMap, layer_load
from macssim.cost._roofline import GROUPED_GEMM, GroupedGemm, expert_phase_s
from macssim.hardware import GpuSpec
from macssim.placement import Placement, contiguous_placement

# Round figures for the closed forms (the defaults are pinned separately below).
KERNEL = GroupedGemm(tile_rows=64, half_efficiency_rows=100.0, fixed_kernels=4,
                     kernel_fixed_s=2e-6)
GPU = GpuSpec(kind="test-gpu", bf16_flops_per_s=100e12, hbm_bytes_per_s=2e12,
              memory_bytes=80e9, compute_efficiency=0.5, memory_efficiency=0.5)
# This GPU reaches 50 TFLOP/s and 1 TB/s (ridge: 50 FLOP/byte); a 10x faster
# compute peak (ridge 500) makes small experts bound by their weight reads.
FAST = dataclasses.replace(GPU, bf16_flops_per_s=1000e12)


def test_defaults_are_the_documented_constants():
    assert GROUPED_GEMM == GroupedGemm(tile_rows=64, half_efficiency_rows=128.0,
                                       fixed_kernels=5, kernel_fixed_s=3e-6)
    assert GROUPED_GEMM.fixed_s == pytest.approx(15e-6)


@pytest.mark.parametrize("gpu", [GPU, FAST], ids=["compute-bound", "weights-bound spread"])
def test_one_hot_expert_against_an_even_spread_of_the_same_rows(tiny_model, gpu):
    """Same GPU total (2,048 rows), once on one expert, once 256 on each of 8 experts."""
    h, inter, b = 1024, 512, 2                     # tiny_model's shape, bf16
    peak = gpu.bf16_flops_per_s * gpu.compute_efficiency
    hbm = gpu.hbm_bytes_per_s * gpu.memory_efficiency
    fixed = 4 * 2e-6
    # One expert, 2,048 rows (a multiple of the 64-row tile: no padding).
    eff_one = 2048 / (2048 + 100)
    compute_one = 6 * h * inter * 2048 / (peak * eff_one)
    memory_one = (3 * h * inter * b + 2 * h * b * 2048) / hbm
    # Eight experts, 256 rows each: eight weight reads, each at the 256-row efficiency.
    eff_each = 256 / (256 + 100)
    compute_even = 8 * 6 * h * inter * 256 / (peak * eff_each)
    memory_even = (8 * 3 * h * inter * b + 2 * h * b * 2048) / hbm
    want_one = fixed + max(compute_one, memory_one)
    want_even = fixed + max(compute_even, memory_even)

    rows = np.zeros((2, 8), np.int64)
    rows[0, 0] = 2048
    rows[1, :] = 256
    got = expert_phase_s(tiny_model, gpu, rows, KERNEL)
    assert got[0] == pytest.approx(want_one, rel=1e-12)
    assert got[1] == pytest.approx(want_even, rel=1e-12)
    assert got[1] - got[0] == pytest.approx(want_even - want_one, rel=1e-12)
    assert got[1] > got[0]
    if gpu is FAST:        # the spread is bound by its eight weight reads, the hot one is not
        assert memory_even > compute_even and compute_one > memory_one
        assert got[1] - got[0] == pytest.approx(memory_even - compute_one, rel=1e-12)
    else:                  # both compute-bound: the difference is 7 experts' n½ rows
        assert got[1] - got[0] == pytest.approx(7 * 6 * h * inter * 100 / peak, rel=1e-12)


def test_monotone_in_every_experts_rows(tiny_model):
    rng = np.random.default_rng(0)
    for gpu in (GPU, FAST):
        for _ in range(50):
            rows = rng.integers(0, 300, (4, 6)) * (rng.random((4, 6)) < 0.6)
            base = expert_phase_s(tiny_model, gpu, rows, KERNEL)
            g, s = rng.integers(0, 4), rng.integers(0, 6)
            more = rows.copy()
            more[g, s] += rng.integers(1, 100)
            after = expert_phase_s(tiny_model, gpu, more, KERNEL)
            assert after[g] >= base[g]
            assert np.array_equal(np.delete(after, g), np.delete(base, g))
        # One expert swept row by row: never cheaper with more rows.
        sweep = np.arange(0, 400)[:, None]
        assert (np.diff(expert_phase_s(tiny_model, gpu, sweep, KERNEL)) >= 0).all()


def test_no_rows_costs_the_fixed_kernels_only(tiny_model):
    idle = np.zeros((3, 5), np.int64)
    assert expert_phase_s(tiny_model, GPU, idle, KERNEL).tolist() == [8e-6] * 3
    no_fixed = dataclasses.replace(KERNEL, fixed_kernels=0)
    assert expert_phase_s(tiny_model, GPU, idle, no_fixed).tolist() == [0.0] * 3
    # An empty slot costs nothing: zero columns change no GPU's time.
    rows = np.array([[7, 300, 0], [64, 0, 0]])
    wide = np.concatenate([rows, np.zeros((2, 4), np.int64)], axis=1)
    assert np.array_equal(expert_phase_s(tiny_model, GPU, rows, KERNEL),
                          expert_phase_s(tiny_model, GPU, wide, KERNEL))


def test_one_row_costs_the_flops_of_a_whole_tile(tiny_model):
    """Compute-bound (the slow GPU, no fixed cost): 1, 63 and 64 rows cost the same;
    65 rows cost a second tile."""
    kernel = dataclasses.replace(KERNEL, fixed_kernels=0)
    rows = np.array([[1], [63], [64], [65], [128]])
    t = expert_phase_s(tiny_model, GPU, rows, kernel)
    peak = GPU.bf16_flops_per_s * GPU.compute_efficiency
    tile = 6 * 1024 * 512 * (64 + 100) / peak
    assert t[0] == t[1] == t[2] == pytest.approx(tile, rel=1e-12)
    assert t[3] == t[4] == pytest.approx(6 * 1024 * 512 * (128 + 100) / peak, rel=1e-12)


def test_same_total_same_experts_tile_aligned_rows_cost_the_same(tiny_model):
    """What the Hockney form implies: with every expert active either way and rows on
    tile boundaries, moving rows from the hot expert to another is free; only padding
    waste and the number of active experts move the cost."""
    hot = np.array([[5120, 64, 64, 64], [1984, 1984, 640, 704]])
    t = expert_phase_s(tiny_model, GPU, hot, KERNEL)
    assert t[0] == pytest.approx(t[1], rel=1e-12)
    ragged = np.array([[5116, 100, 60, 36], [1963, 2000, 700, 653]])   # same totals
    r = expert_phase_s(tiny_model, GPU, ragged, KERNEL)
    # 5116→5120, 100→128, 60→64, 36→64: 5,376 padded rows; 1963→1984, 2000→2048,
    # 700→704, 653→704: 5,440.
    peak = GPU.bf16_flops_per_s * GPU.compute_efficiency
    assert r[1] - r[0] == pytest.approx(6 * 1024 * 512 * 64 / peak, rel=1e-12)


def test_bad_rows_are_refused(tiny_model):
    from macssim import MacssimError

    with pytest.raises(MacssimError, match=r"\[G, S\]"):
        expert_phase_s(tiny_model, GPU, np.zeros(4), KERNEL)
    with pytest.raises(MacssimError, match=r"\[G, S\]"):
        expert_phase_s(tiny_model, GPU, -np.ones((2, 2)), KERNEL)


def test_rows_per_slot_follow_the_placement_and_its_replicas():
    """Slow twin: per-assignment loop over the replica rule (token on GPU g, expert e →
    e's replicas on g if any, else all of e's replicas (one node); the n-th assignment
    to pick a given (set, expert) takes the set's (n mod size)-th slot), on a placement
    whose slots are not grouped by GPU."""
    slot_expert = np.array([3, 0, 1, 0, 2, 3, 4, 5, 6, 7, 1])
    slot_gpu = np.array([1, 0, 0, 1, 1, 0, 2, 2, 3, 3, 2])
    placement = Placement(num_gpus=4, slot_expert=slot_expert, slot_gpu=slot_gpu)
    rng = np.random.default_rng(1)
    num_tokens = 200
    ids = np.stack([rng.choice(8, 2, replace=False) for _ in range(num_tokens)])
    kept = rng.random(ids.shape) < 0.8
    token_gpu = rng.integers(0, 4, num_tokens)
    load = layer_load(LayerRouting(ids, kept), token_gpu,
                      ExpertMap.from_placement(placement), 10.0, where="test")
    slots_of = {e: [s for s in range(slot_expert.size) if slot_expert[s] == e]
                for e in range(8)}
    picked: dict = {}
    want = np.zeros((4, 3), int)             # GPUs hold 3, 3, 3 and 2 slots
    for t in range(num_tokens):
        for e, k in zip(ids[t], kept[t], strict=True):
            if k:
                own = [s for s in slots_of[e] if slot_gpu[s] == token_gpu[t]]
                pool, key = (own, (token_gpu[t], e)) if own else (slots_of[e], ("all", e))
                slot = pool[picked.get(key, 0) % len(pool)]
                picked[key] = picked.get(key, 0) + 1
                g = slot_gpu[slot]
                local = int((slot_gpu[:slot] == g).sum())
                want[g, local] += 1
    assert load.rows_per_slot.tolist() == want.tolist()
    assert load.assignments.tolist() == want.sum(axis=1).tolist()
    assert load.active_experts.tolist() == (want > 0).sum(axis=1).tolist()


def test_contiguous_placement_gives_one_column_per_local_expert():
    load = layer_load(LayerRouting(np.array([[0, 1], [1, 7], [6, 7]]), np.ones((3, 2), bool)),
                      np.zeros(3, np.int64), ExpertMap.from_placement(contiguous_placement(8, 4)),
                      10.0, where="test")
    assert load.rows_per_slot.tolist() == [[1, 2], [0, 0], [0, 0], [1, 2]]
