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


def _last_row(output: str) -> list[str]:
    return output.strip().splitlines()[-1].split()


def test_gemm_on_a_topology_is_the_roofline_gemm_with_its_fixed_cost():
    from macssim.cost import KERNEL_FIXED_S
    from macssim.hardware import load_topology

    res = run("gemm", "--topology", "8xH100", "--m", "8192", "--n", "8192", "--k", "8192")
    assert res.exit_code == 0, res.output
    gpu = load_topology("8xH100").gpu
    # A square 8192 GEMM is compute-bound: 2·m·n·k at the calibrated peak, plus one kernel.
    expected = KERNEL_FIXED_S + 2 * 8192**3 / (gpu.bf16_flops_per_s * gpu.compute_efficiency)
    row = [r for r in res.output.splitlines() if r.startswith("roofline ")][0].split()
    assert math.isclose(float(row[1]), expected * 1e6, rel_tol=1e-3)


def test_alltoall_reports_nccl_tests_bus_bandwidth_consistently():
    res = run("alltoall", "--topology", "8xH100", "--bytes-per-rank", "1GiB")
    assert res.exit_code == 0, res.output
    t_us, algbw, busbw = map(float, _last_row(res.output))
    assert math.isclose(algbw, (1 << 30) / (t_us * 1e-6) / 1e9, rel_tol=1e-3)
    assert math.isclose(busbw, algbw * 7 / 8, rel_tol=1e-3)
    # 1 GiB per rank runs near the calibrated NVLink capacity (370 GB/s, docs/validation.md)
    assert 300 < busbw <= 370


def test_experts_one_hot_costs_more_than_an_even_spread():
    one = run("experts", "--rows", "1024")
    even = run("experts", "--rows", ",".join(["64"] * 16))
    assert one.exit_code == 0 and even.exit_code == 0, one.output + even.output
    t_one = float(_last_row(one.output)[1])
    t_even = float(_last_row(even.output)[1])
    assert t_even > t_one   # 16 experts' weights and tiles against one expert's


def test_bad_operation_arguments_are_usage_errors():
    res = run("experts", "--rows", "5,x")
    assert res.exit_code == 2 and "expected integers" in res.output
    res = run("experts", "--rows", ",".join(["1"] * 17))   # 8xH100 holds 16 of 128 per GPU
    assert res.exit_code != 0 and "holds 16" in res.output
    res = run("alltoall", "--bytes-per-rank", "-3")
    assert res.exit_code == 2 and "positive size" in res.output
    res = run("dispatch", "--experts", "100")
    assert res.exit_code == 2 and "do not divide" in res.output
