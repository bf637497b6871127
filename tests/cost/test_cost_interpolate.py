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


# -- rule 5: the monotone lower envelope along the last size key ------------------------

def sweep_table(points):
    rows = [dict(op="moe", **COMMON, dtype="bfloat16", distribution="balanced",
                 hidden=2048, inter=768, experts=128, topk=8, tp=1, ep=8, tokens=t,
                 latency_s=lat) for t, lat in points]
    return table_from_frame(pd.DataFrame(rows))


def test_a_monotone_sweep_interpolates_exactly_as_without_the_envelope():
    from macssim.cost._interpolate import leave_one_out_points
    table = moe_table()
    for tokens in (1, 3, 8, 100, 4096):
        assert predict(table, experts=64, tokens=tokens) == pytest.approx(
            moe_law(tokens, 64), rel=1e-12)
    with_rule = leave_one_out_points(table, monotone=True)
    without = leave_one_out_points(table, monotone=False)
    pd.testing.assert_frame_equal(with_rule, without)
    scored = with_rule.dropna()
    np.testing.assert_allclose(scored["predicted_s"], scored["measured_s"], rtol=1e-12)


def test_a_value_above_a_larger_sizes_value_is_lowered_to_it():
    # 4 tokens measured at 100, above 8 tokens' 40: the envelope takes min(100, 40, 80).
    table = sweep_table([(1, 10.0), (2, 20.0), (4, 100.0), (8, 40.0), (16, 80.0)])
    assert predict(table, tokens=4) == pytest.approx(40.0)
    detail = predict_detail(table, tokens=4)
    assert detail.exact and detail.latency_s == pytest.approx(40.0)
    # between 2 (20) and 4 (40): slope 1 in log-log, so 20 * 3/2
    assert predict(table, tokens=3) == pytest.approx(30.0)
    # between 4 (40) and 8 (40): flat
    assert predict(table, tokens=6) == pytest.approx(40.0)
    for tokens, lat in [(1, 10.0), (2, 20.0), (8, 40.0), (16, 80.0)]:
        assert predict(table, tokens=tokens) == pytest.approx(lat)


def test_a_value_below_smaller_sizes_lowers_them_the_envelope_never_raises():
    table = sweep_table([(1, 10.0), (2, 20.0), (4, 5.0), (8, 40.0)])
    assert [predict(table, tokens=t) for t in (1, 2, 4, 8)] == pytest.approx(
        [5.0, 5.0, 5.0, 40.0])


def test_leave_one_out_removes_the_point_before_the_envelope():
    from macssim.cost._interpolate import leave_one_out_points
    table = sweep_table([(1, 10.0), (2, 20.0), (4, 100.0), (8, 40.0), (16, 80.0)])
    got = leave_one_out_points(table).set_index("tokens")
    # measured: the raw value, not the envelope
    assert got["measured_s"].tolist() == pytest.approx([10.0, 20.0, 100.0, 40.0, 80.0])
    assert np.isnan(got.loc[1.0, "predicted_s"]) and np.isnan(got.loc[16.0, "predicted_s"])
    # 2 left out: the rest's envelope is 1:10, 4:min(100, 40, 80) = 40 → 20 at 2
    assert got.loc[2.0, "predicted_s"] == pytest.approx(20.0)
    # 4 (the spike) left out: the rest is monotone, sqrt(20 * 40) at 4
    assert got.loc[4.0, "predicted_s"] == pytest.approx(math.sqrt(20.0 * 40.0))
    # 8 left out: 4's envelope is min(100, 80) = 80 without it, so 80 at 8 (not 40)
    assert got.loc[8.0, "predicted_s"] == pytest.approx(80.0)
    without = leave_one_out_points(table, monotone=False).set_index("tokens")
    assert without.loc[8.0, "predicted_s"] == pytest.approx(math.sqrt(100.0 * 80.0))
    measured, predicted, edge = leave_one_out(table)
    assert edge == 2
    assert sorted(predicted) == pytest.approx(sorted([20.0, math.sqrt(800.0), 80.0]))


def test_the_envelope_runs_along_the_last_size_key_only():
    # GEMM: at (m=1, n=128) the k sweep 256 → 1024 → 8192 has 1024 above 8192: lowered;
    # along m nothing is lowered (m=4's value stays above m=16's).
    rows = [dict(op="gemm", **COMMON, dtype="bfloat16", m=m, n=128, k=k, latency_s=lat)
            for m, k, lat in [(1, 256, 1.0), (1, 1024, 9.0), (1, 8192, 4.0),
                              (4, 256, 8.0), (4, 1024, 8.0), (4, 8192, 8.0),
                              (16, 256, 2.0), (16, 1024, 2.0), (16, 8192, 2.0)]]
    table = table_from_frame(pd.DataFrame(rows))
    assert predict(table, m=1, n=128, k=1024) == pytest.approx(4.0)
    assert predict(table, m=4, n=128, k=1024) == pytest.approx(8.0)
