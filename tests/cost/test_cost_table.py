"""macssim's cost-table format: what loads, and what is refused with a message that names
the file, the row and the column."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from macssim import MacssimError
from macssim.cost import OPS, CostError, load_table, save_table, table_from_frame

HEADER = "op,system,framework,version,kernel,dtype,m,n,k,latency_s\n"
ROW = "gemm,h100_sxm,mine,1,cublas,bfloat16,{m},4096,4096,{lat}\n"


def _write(tmp_path, text, name="gemm.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _good(tmp_path):
    return _write(tmp_path, HEADER + ROW.format(m=1, lat=1e-5) + ROW.format(m=2, lat=2e-5))


def test_a_valid_table_loads_with_typed_columns(tmp_path):
    table = load_table(_good(tmp_path))
    assert table.op == "gemm" and len(table) == 2
    assert table.frame["m"].tolist() == [1.0, 2.0]
    assert table.frame["latency_s"].dtype == float
    assert table.values("dtype") == ["bfloat16"]


def test_cost_error_is_a_macssim_error():
    assert issubclass(CostError, MacssimError)


def test_save_then_load_round_trips_exactly(tmp_path):
    table = load_table(_good(tmp_path))
    out = tmp_path / "copy.csv"
    save_table(table, out)
    again = load_table(out)
    pd.testing.assert_frame_equal(table.frame, again.frame)


@pytest.mark.parametrize("row, line, column, shown", [
    (ROW.format(m=3, lat="nan"), 4, "latency_s", "'nan'"),
    (ROW.format(m=3, lat="inf"), 4, "latency_s", "'inf'"),
    (ROW.format(m=3, lat="-1e-5"), 4, "latency_s", "-1e-05"),
    (ROW.format(m=3, lat="0"), 4, "latency_s", "0"),
    (ROW.format(m=3, lat="fast"), 4, "latency_s", "'fast'"),
    (ROW.format(m=3, lat=""), 4, "latency_s", "''"),
    (ROW.format(m=0, lat=1e-5), 4, "m", "0"),
    (ROW.format(m="x", lat=1e-5), 4, "m", "'x'"),
    ("gemm,h100_sxm,mine,1,cublas,,3,4096,4096,1e-5\n", 4, "dtype", "''"),
])
def test_a_bad_cell_is_refused_naming_file_row_and_column(tmp_path, row, line, column,
                                                          shown):
    path = _write(tmp_path, HEADER + ROW.format(m=1, lat=1e-5) + ROW.format(m=2, lat=2e-5)
                  + row)
    with pytest.raises(CostError) as info:
        load_table(path)
    message = str(info.value)
    assert message.startswith(f"{path}: row {line}: \"{column}\" must be"), message
    assert shown in message


def test_an_integer_key_given_as_a_float_is_refused(tmp_path):
    schema = OPS["moe"]
    values = {"op": "moe", "system": "s", "framework": "f", "version": "1", "kernel": "k",
              "dtype": "bfloat16", "distribution": "balanced", "hidden": 2048,
              "inter": 768, "experts": 128, "topk": 8, "tp": 1, "ep": 8, "tokens": 16,
              "latency_s": 1e-4}
    text = ",".join(schema.columns) + "\n" + ",".join(str(values[c]) for c in schema.columns)
    path = _write(tmp_path, text.replace(",128,8,", ",128,8.0,") + "\n", "moe.csv")
    with pytest.raises(CostError, match=r'row 2: "topk" must be an integer >= 1.*, got '
                                        r"'8.0'"):
        load_table(path)


def test_a_missing_column_is_named(tmp_path):
    path = _write(tmp_path, HEADER.replace(",n,k,", ",n,") + "gemm,s,f,1,c,bf16,1,2,1e-5\n")
    with pytest.raises(CostError, match=rf"{path}: missing column 'k' \(a 'gemm' table "
                                        "needs"):
        load_table(path)


def test_an_unknown_column_is_named(tmp_path):
    path = _write(tmp_path, HEADER.replace("latency_s", "latency_ms")
                  + ROW.format(m=1, lat=1))
    with pytest.raises(CostError, match="missing column 'latency_s'"):
        load_table(path)
    path = _write(tmp_path, HEADER.strip() + ",note\n" + ROW.format(m=1, lat=1).strip()
                  + ",x\n")
    with pytest.raises(CostError, match="unknown column 'note'"):
        load_table(path)


def test_a_source_column_is_carried(tmp_path):
    path = _write(tmp_path, HEADER.strip() + ",source\n" + ROW.format(m=1, lat=1).strip()
                  + ",my bench\n")
    assert load_table(path).frame["source"].tolist() == ["my bench"]


def test_unknown_and_mixed_ops_are_refused(tmp_path):
    path = _write(tmp_path, HEADER + ROW.format(m=1, lat=1).replace("gemm,", "conv,", 1))
    with pytest.raises(CostError, match=r'row 2: "op" must be one of'):
        load_table(path)
    path = _write(tmp_path, "op,system\ngemm,a\nmoe,b\n")
    with pytest.raises(CostError, match=r"row 3: \"op\" must be 'gemm' like the first row"):
        load_table(path)


def test_empty_unreadable_and_non_utf8_files_are_refused(tmp_path):
    with pytest.raises(CostError, match="no rows"):
        load_table(_write(tmp_path, HEADER))
    with pytest.raises(CostError, match="not a readable CSV"):
        load_table(_write(tmp_path, ""))
    with pytest.raises(CostError, match="cannot read cost table"):
        load_table(tmp_path / "absent.csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(HEADER.encode() + ROW.format(m=1, lat=1).replace("mine", "m\xe9")
                    .encode("latin-1"))
    with pytest.raises(CostError, match="not UTF-8"):
        load_table(bad)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None,
                    reason="pyarrow installed: Parquet reads")
def test_parquet_without_pyarrow_says_what_to_install(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(CostError, match="pyarrow"):
        load_table(path)


def test_a_frame_with_numbers_validates_like_a_file():
    frame = pd.DataFrame({"op": ["nccl"], "system": ["s"], "framework": ["nccl"],
                          "version": ["2"], "kernel": ["NCCL"], "dtype": ["half"],
                          "collective": ["alltoall"], "ranks": [8],
                          "bytes_per_rank": [1 << 20], "latency_s": [float("nan")]})
    with pytest.raises(CostError, match=r'<frame>: row 0: "latency_s" must be a finite'):
        table_from_frame(frame)
    frame["latency_s"] = [1e-5]
    assert len(table_from_frame(frame)) == 1
    frame["ranks"] = [8.0]
    with pytest.raises(CostError, match='"ranks" must be an integer'):
        table_from_frame(frame)
