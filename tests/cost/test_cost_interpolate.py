"""Interpolation against closed forms: a table drawn from a known power law must be
reproduced exactly between its points (log-log linear is exact for a power law), and a
point outside the measurements is refused, or extrapolated only when asked and only
within MAX_EXTRAPOLATION."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from macssim.cost import (
    MAX_EXTRAPOLATION,
    CostError,
    leave_one_out,
    predict,
    predict_detail,
    table_from_frame,
)

COMMON = {"system": "sys", "framework": "fw", "version": "1", "kernel": "k"}


def gemm_law(m, n, k):
    return 2e-9 * m ** 0.9 * n ** 0.7 * k ** 1.1


def moe_law(tokens, experts):
    return 3e-6 * tokens ** 0.8 * (experts / 64)


MS = [1, 4, 16, 64, 256, 1024]
NS = [128, 512, 2048]
KS = [256, 1024, 8192]


def gemm_table(drop=()):
    rows = [dict(op="gemm", **COMMON, dtype="bfloat16", m=m, n=n, k=k,
                 latency_s=gemm_law(m, n, k))
            for m, n, k in itertools.product(MS, NS, KS) if (m, n, k) not in drop]
    rows.append(dict(op="gemm", **COMMON, dtype="fp8", m=1, n=128, k=256, latency_s=1.0))
    return table_from_frame(pd.DataFrame(rows))


def moe_table():
    rows = [dict(op="moe", **COMMON, dtype="bfloat16", distribution="balanced",
                 hidden=2048, inter=768, experts=e, topk=8, tp=1, ep=8, tokens=t,
                 latency_s=moe_law(t, e))
            for e in (64, 128) for t in (1, 8, 64, 512, 4096)]
    return table_from_frame(pd.DataFrame(rows))


@pytest.mark.parametrize("m, n, k", [
    (1, 128, 256), (3, 300, 5000), (100, 2048, 300), (1000, 129, 8000), (256, 512, 1024),
    (1024, 2048, 8192), (2.5, 1000.5, 4096),
])
def test_a_power_law_is_reproduced_exactly_inside_the_grid(m, n, k):
    got = predict(gemm_table(), dtype="bfloat16", m=m, n=n, k=k)
    assert got == pytest.approx(gemm_law(m, n, k), rel=1e-12)


def test_a_hole_in_the_grid_widens_the_bracket_and_stays_exact():
    table = gemm_table(drop={(64, 512, 1024), (64, 2048, 1024), (16, 512, 1024)})
    for m, n, k in [(64, 512, 1024), (40, 700, 1024), (16, 512, 1024)]:
        got = predict(table, dtype="bfloat16", m=m, n=n, k=k)
        assert got == pytest.approx(gemm_law(m, n, k), rel=1e-12)


def test_a_measured_point_is_returned_as_measured():
    detail = predict_detail(gemm_table(), dtype="bfloat16", m=16, n=512, k=1024)
    assert detail.exact and not detail.extrapolated
    assert detail.latency_s == pytest.approx(gemm_law(16, 512, 1024), rel=1e-12)
    assert not predict_detail(gemm_table(), dtype="bfloat16", m=17, n=512, k=1024).exact


def test_exact_keys_select_their_own_points_and_are_never_interpolated():
    table = moe_table()
    assert predict(table, experts=128, tokens=100) == pytest.approx(moe_law(100, 128),
                                                                    rel=1e-12)
    with pytest.raises(CostError, match=r"no moe measurement with experts=96 \(given the "
                                        r"other keys: \[64, 128\]\)"):
        predict(table, experts=96, tokens=100)
    with pytest.raises(CostError, match=r"several 'experts' values; pass one of \[64, 128\]"):
        predict(table, tokens=100)
    assert predict(table, experts=np.int64(64), tokens=8) == predict(table, experts=64.0,
                                                                      tokens=8)
    for bad in (64.5, True, "64"):
        with pytest.raises(CostError, match="'experts' must be an integer"):
            predict(table, experts=bad, tokens=8)


@pytest.mark.parametrize("tokens", [0.4, 4096 * 1.01, 1e6])
def test_a_size_outside_the_measurements_is_refused(tokens):
    with pytest.raises(CostError, match="tokens=.* (below the smallest|above the largest) "
                                        r"measured value \(1 … 4096\)"):
        predict(moe_table(), experts=64, tokens=tokens)


def test_extrapolation_only_when_asked_flagged_and_within_the_limit():
    table = moe_table()
    for tokens in (4096 * MAX_EXTRAPOLATION, 1 / MAX_EXTRAPOLATION, 6000):
        detail = predict_detail(table, experts=64, tokens=tokens, extrapolate=True)
        assert detail.extrapolated
        assert detail.latency_s == pytest.approx(moe_law(tokens, 64), rel=1e-12)
    assert not predict_detail(table, experts=64, tokens=100, extrapolate=True).extrapolated
    with pytest.raises(CostError, match=r"2.01× beyond the measured largest value 4096 .*"
                                        r"at most 2×"):
        predict(table, experts=64, tokens=4096 * 2.01, extrapolate=True)
    with pytest.raises(CostError, match="beyond the measured smallest value 1"):
        predict(table, experts=64, tokens=0.49, extrapolate=True)


def test_every_size_key_is_range_checked():
    table = gemm_table()
    with pytest.raises(CostError, match=r"k=9000 is above the largest measured value "
                                        r"\(256 … 8192\)"):
        predict(table, dtype="bfloat16", m=10, n=300, k=9000)
    with pytest.raises(CostError, match="n=100 is below the smallest"):
        predict(table, dtype="bfloat16", m=10, n=100, k=300)


def test_bad_queries_are_refused_clearly():
    table = gemm_table()
    with pytest.raises(CostError, match="needs 'k'"):
        predict(table, dtype="bfloat16", m=1, n=128)
    with pytest.raises(CostError, match="has no key 'tokens'"):
        predict(table, dtype="bfloat16", m=1, n=128, k=256, tokens=3)
    for bad in (0, -1, math.nan, math.inf, True, "8"):
        with pytest.raises(CostError, match="'m' must be a finite number > 0"):
            predict(table, dtype="bfloat16", m=bad, n=128, k=256)


def test_repeated_measurements_are_combined_by_their_median():
    rows = [dict(op="nccl", **COMMON, dtype="half", collective="alltoall", ranks=8,
                 bytes_per_rank=b, latency_s=lat)
            for b, lat in [(1024, 1.0), (1024, 2.0), (1024, 9.0), (4096, 4.0)]]
    table = table_from_frame(pd.DataFrame(rows))
    assert predict(table, bytes_per_rank=1024) == pytest.approx(2.0)
    assert predict(table, bytes_per_rank=2048) == pytest.approx(math.sqrt(2.0 * 4.0))


def test_leave_one_out_of_a_power_law_is_exact_and_counts_the_edges():
    table = moe_table()
    measured, predicted, edge = leave_one_out(table)
    assert edge == 4  # the smallest and largest token count, for each of 2 expert counts
    assert measured.size == 6
    np.testing.assert_allclose(predicted, measured, rtol=1e-12)
    measured, predicted, edge = leave_one_out(gemm_table().select(dtype="bfloat16"))
    np.testing.assert_allclose(predicted, measured, rtol=1e-12)
    assert measured.size + edge == len(MS) * len(NS) * len(KS)
