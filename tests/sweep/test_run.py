"""Running a sweep: determinism, resume after an interruption, failing points, the
results table never left torn."""

from __future__ import annotations

import pytest

from macssim.sweep import SweepError, read_results, run_sweep
from macssim.sweep import _point as point_module
from tests.sweep.conftest import small_sweep


def test_one_row_per_point_policy_kind_with_the_points_axes(reference_table):
    spec, path, _ = reference_table
    rows, meta = read_results(path)
    points = spec.points()
    assert meta["macssim_version"]
    # the small trace has prefill and decode steps: kinds all, prefill, decode
    assert len(rows) == len(points) * 2 * 3
    by_point = {}
    for r in rows:
        by_point.setdefault(r["point_id"], []).append(r)
    assert set(by_point) == {p.point_id for p in points}
    for p in points:
        prs = by_point[p.point_id]
        assert {(r["policy"], r["kind"]) for r in prs} == {
            (pol, k) for pol in ("macs", "token-drop") for k in ("all", "prefill", "decode")}
        for r in prs:
            assert r["status"] == "ok" and r["error"] is None
            for name, value in p.axes.items():
                assert r[name] == value
            assert r["num_gpus"] == 8
            assert r["moe_latency_p99_s"] >= r["moe_latency_mean_s"] > 0
            assert 0 <= r["dropped_semantic_mass_frac"] <= 1
    # rows follow the sweep's point order
    assert [r["point_index"] for r in rows] == sorted(r["point_index"] for r in rows)


def test_a_larger_capacity_factor_drops_no_more(reference_table):
    """Invariant of token-drop: C = ceil(γ·T·k/E) grows with γ, so fewer drops."""
    _, path, _ = reference_table
    rows, _ = read_results(path)
    td = {(r["capacity_factor"], r["precision"]): r["dropped_assignments_frac"]
          for r in rows if r["policy"] == "token-drop" and r["kind"] == "all"}
    for prec in ("bf16", "fp8-experts"):
        assert td[(1.5, prec)] <= td[(1.0, prec)]


def test_the_same_sweep_twice_gives_identical_tables(reference_table, tmp_path):
    spec, _, expected = reference_table
    out = tmp_path / "again.parquet"
    run_sweep(spec, out)
    assert out.read_bytes() == expected


class _Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("k", [1, 3])
def test_interrupted_after_k_points_then_resumed_equals_uninterrupted(reference_table,
                                                                      tmp_path, k):
    spec, _, expected = reference_table
    out = tmp_path / "r.parquet"

    def stop_after_k(done, total, failed):
        if done == k:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_sweep(spec, out, progress=stop_after_k, flush_s=3600.0)
    # the table written on the way out is complete and holds exactly the k points
    rows, _ = read_results(out)
    assert len({r["point_id"] for r in rows}) == k
    assert not list(tmp_path.glob(".*macssim-tmp*"))
    outcome = run_sweep(spec, out, resume=True)
    assert (outcome.skipped, outcome.ran) == (k, len(spec.points()) - k)
    assert out.read_bytes() == expected
    # resuming a finished sweep runs nothing and leaves the same table
    assert run_sweep(spec, out, resume=True).ran == 0
    assert out.read_bytes() == expected


def test_two_local_jobs_give_the_same_table_as_one(reference_table, tmp_path):
    spec, _, expected = reference_table
    out = tmp_path / "j2.parquet"
    run_sweep(spec, out, jobs=2)
    assert out.read_bytes() == expected


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(small_trace, tmp_path,
                                                          monkeypatch):
    real = point_module._replay_rows

    def fail_at_1_5(point, trace):
        if point.axes["capacity_factor"] == 1.5:
            raise RuntimeError("injected failure\nsecond line")
        return real(point, trace)

    monkeypatch.setattr(point_module, "_replay_rows", fail_at_1_5)
    spec = small_sweep(small_trace, precision=["bf16"])
    out = tmp_path / "f.parquet"
    outcome = run_sweep(spec, out)
    assert (outcome.ran, outcome.failed) == (2, 1)
    rows, _ = read_results(out)
    failed = [r for r in rows if r["status"] == "error"]
    assert len(failed) == 1
    assert failed[0]["capacity_factor"] == 1.5
    assert failed[0]["error"] == "RuntimeError: injected failure second line"
    assert failed[0]["policy"] is None and failed[0]["moe_latency_p99_s"] is None
    assert {r["status"] for r in rows if r["capacity_factor"] == 1.0} == {"ok"}
    # resume runs the failed point again (now without the injected failure)
    monkeypatch.setattr(point_module, "_replay_rows", real)
    again = run_sweep(spec, out, resume=True)
    assert (again.skipped, again.ran, again.failed) == (1, 1, 0)
    assert {r["status"] for r in read_results(out)[0]} == {"ok"}


def test_a_write_that_fails_half_way_leaves_the_previous_table(reference_table, tmp_path,
                                                               monkeypatch):
    import pyarrow.parquet as pq

    spec, ref_path, expected = reference_table
    out = tmp_path / "t.parquet"
    out.write_bytes(expected)

    def torn_write(table, where, **kw):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a table")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", torn_write)
    with pytest.raises(SweepError, match="cannot write the results table"):
        run_sweep(spec, out, force=True)
    assert out.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_killed_with_sigkill_mid_sweep_then_resumed_equals_uninterrupted(reference_table,
                                                                         small_trace, tmp_path):
    """A real kill (no cleanup runs): the table on disk is complete at every instant."""
    import os
    import signal
    import subprocess
    import sys
    import time

    spec, _, expected = reference_table
    out = tmp_path / "killed.parquet"
    code = ("import sys; from macssim.sweep import run_sweep; "
            "from tests.sweep.conftest import small_sweep; "
            "run_sweep(small_sweep(sys.argv[1]), sys.argv[2], flush_s=0.0)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(small_trace), str(out)],
                            cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 300
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert out.exists(), "the sweep wrote no table before it was killed"
    rows, _ = read_results(out)  # complete, never torn
    done = {r["point_id"] for r in rows}
    assert 1 <= len(done) <= len(spec.points())
    outcome = run_sweep(spec, out, resume=True)
    assert outcome.skipped == len(done)
    assert out.read_bytes() == expected
    assert not list(tmp_path.glob(".*macssim-tmp*"))  # a dead run's temporary is removed


def test_placement_axes_reach_the_replay(small_trace, tmp_path):
    """An eplb point with redundant slots replays on EPLB (its imbalance is no worse than
    contiguous's without capacity), and the table names the placement of every row."""
    spec = small_sweep(small_trace, capacity_factor=[1.0], precision=["bf16"],
                       placement=["contiguous", "eplb"], redundant_experts=[0, 8])
    path = tmp_path / "placements.parquet"
    outcome = run_sweep(spec, path)
    assert (outcome.ran, outcome.failed) == (3, 0)
    rows, _ = read_results(path)
    imbalance = {(r["placement"], r["redundant_experts"]): r["imbalance_mean"] for r in rows
                 if r["policy"] == "token-drop" and r["kind"] == "prefill"}
    assert set(imbalance) == {("contiguous", 0), ("eplb", 0), ("eplb", 8)}
    assert imbalance[("eplb", 8)] != imbalance[("contiguous", 0)]
