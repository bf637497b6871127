"""The results table: never overwrite what macssim did not write, refuse another
version's or a half-written table with a clear message."""

from __future__ import annotations

import pytest

from macssim.sweep import SweepError, read_results, run_sweep
from macssim.sweep import _table as table_module
from macssim.sweep._table import ResultsTable


def _row(point_id="p", **kw):
    return {"point_id": point_id, "point_index": 0, "status": "ok", "error": None, **kw}


def test_a_file_macssim_did_not_write_is_refused_and_left_untouched(tmp_path, reference_table):
    spec, _, _ = reference_table
    for content in (b"my notes\n", b""):
        f = tmp_path / "notes.parquet"
        f.write_bytes(content)
        for flags in ({}, {"force": True}, {"resume": True}):
            with pytest.raises(SweepError, match="never overwrites a file it cannot recognise"):
                run_sweep(spec, f, **flags)
            assert f.read_bytes() == content


def test_a_foreign_parquet_table_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), f)
    with pytest.raises(SweepError, match="not one macssim sweep wrote"):
        read_results(f)
    with pytest.raises(SweepError, match="not one macssim sweep wrote"):
        ResultsTable.open(f, resume=False, force=True)


def test_a_half_written_table_is_a_clear_error(tmp_path, reference_table):
    _, _, data = reference_table
    f = tmp_path / "half.parquet"
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(SweepError, match=r"not a readable Parquet table \(half written"):
        read_results(f)


def test_a_table_from_another_version_is_refused(tmp_path, monkeypatch):
    f = tmp_path / "old.parquet"
    monkeypatch.setattr(table_module, "__version__", "0.0.1")
    ResultsTable(f, [_row()]).write({})
    monkeypatch.undo()
    with pytest.raises(SweepError, match=r"written by macssim 0.0.1 .*; this is macssim"):
        read_results(f)
    with pytest.raises(SweepError, match="written by macssim 0.0.1"):
        ResultsTable.open(f, resume=True, force=False)


def test_an_existing_sweep_table_needs_resume_or_force(tmp_path):
    f = tmp_path / "s.parquet"
    ResultsTable(f, [_row("a"), _row("b", status="error", error="boom")]).write({})
    with pytest.raises(SweepError, match="already holds a sweep table .*--resume"):
        ResultsTable.open(f, resume=False, force=False)
    assert ResultsTable.open(f, resume=True, force=False).done_ids() == {"a"}
    assert ResultsTable.open(f, resume=False, force=True).rows == []


def test_rows_and_columns_are_in_canonical_order_whatever_the_arrival(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    r1 = _row("p1", policy="macs", tokens_per_s=1.0, zeta=1)
    r2 = _row("p2", policy="macs", moe_latency_p99_s=2.0, alpha=None)
    ResultsTable(a, [r1, r2]).write({"p1": 0, "p2": 1})
    ResultsTable(b, [dict(reversed(list(r2.items()))), r1]).write({"p1": 0, "p2": 1})
    assert a.read_bytes() == b.read_bytes()
    rows, _ = read_results(a)
    assert [r["point_id"] for r in rows] == ["p1", "p2"]
    assert list(rows[0]) == ["point_id", "point_index", "status", "error", "policy",
                             "moe_latency_p99_s", "tokens_per_s", "alpha", "zeta"]
