"""``macssim cost``: a user checks one number against their own benchmark."""

from __future__ import annotations

import math

from click.testing import CliRunner

from macssim.cli import main
from macssim.cost import save_table

from .test_cost_interpolate import gemm_law, gemm_table


def run(*args: str):
    return CliRunner().invoke(main, ["cost", *args])


def test_predict_between_measurements_follows_the_power_law(tmp_path):
    path = tmp_path / "gemm.csv"
    save_table(gemm_table(), path)
    res = run("predict", str(path), "system=sys", "framework=fw", "version=1", "kernel=k",
              "dtype=bfloat16", "m=300", "n=512", "k=1024")
    assert res.exit_code == 0, res.output
    row = res.output.strip().splitlines()[-1].split()
    assert row[0] == "gemm" and row[2] == "interpolated"
    assert math.isclose(float(row[1]), gemm_law(300, 512, 1024) * 1e6, rel_tol=1e-3)


def test_keys_lists_what_a_query_names(tmp_path):
    path = tmp_path / "gemm.csv"
    save_table(gemm_table(), path)
    res = run("keys", str(path))
    assert res.exit_code == 0
    for key in ("dtype", "m", "n", "k"):
        assert f"\n{key} " in res.output


def test_outside_the_measurements_is_a_clear_error(tmp_path):
    path = tmp_path / "gemm.csv"
    save_table(gemm_table(), path)
    common = ["system=sys", "framework=fw", "version=1", "kernel=k", "dtype=bfloat16"]
    res = run("predict", str(path), *common, "m=100000", "n=512", "k=1024")
    assert res.exit_code == 1 and res.output.startswith("Error: ") and "m" in res.output
    res = run("predict", str(path), *common, "m")
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    res = run("predict", str(tmp_path / "missing.csv"), "m=1")
    assert res.exit_code == 1 and "missing.csv" in res.output
