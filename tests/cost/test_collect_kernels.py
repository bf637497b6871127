"""The GPU collector's dry run on CPU: what it writes is a valid macssim table that the
measured backend's reader and the cost CLI accept (its numbers are this CPU's, not a
GPU's; the run on a GPU is what it is for)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from macssim.cost import load_table, predict_detail

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "collect_kernels.py"


@pytest.fixture(scope="module")
def collector():
    spec = importlib.util.spec_from_file_location("collect_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_tables_the_reader_accepts(collector, tmp_path):
    collector.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--system", "cpu",
                    "--framework", "torch", "--version", "test", "--warmup", "1",
                    "--repeat", "2"])
    gemm = load_table(tmp_path / "gemm.csv")
    moe = load_table(tmp_path / "moe.csv")
    assert len(gemm) == 6 and len(moe) == 3          # 2 shapes x 3 m; 3 token counts
    assert (gemm.frame["latency_s"] > 0).all() and (moe.frame["latency_s"] > 0).all()
    exact = gemm.frame.iloc[0]
    got = predict_detail(gemm, system="cpu", framework="torch", version="test",
                         kernel="torch_matmul", dtype="bfloat16", m=int(exact["m"]),
                         n=int(exact["n"]), k=int(exact["k"]))
    assert got.exact and got.latency_s == pytest.approx(exact["latency_s"], rel=1e-12)
    with pytest.raises(SystemExit, match="exists; not overwritten"):
        collector.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--system",
                        "cpu", "--warmup", "0", "--repeat", "1", "--ops", "gemm"])
