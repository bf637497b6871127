"""The aiconfigurator-core converter: layout, units and version choice on a small fake
data tree (no package, no pyarrow needed), the message when the package is absent, and
a smoke test on the real package where it is installed."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

import macssim.cost._aiconfigurator as aic
from macssim.cost import (
    CostError,
    aiconfigurator_sources,
    from_aiconfigurator,
    predict,
    tables_from_aiconfigurator,
)

FRAMES = {
    ("gemm_perf.parquet", "1.3.0rc20"): pd.DataFrame({
        "kernel_source": "torch_flow", "gemm_dtype": "bfloat16", "m": [1, 2, 4],
        "n": 4096, "k": 4096, "latency": [0.010, 0.011, 0.012]}),  # ms
    ("gemm_perf.parquet", "1.3.0rc23"): pd.DataFrame({
        "kernel_source": "torch_flow", "gemm_dtype": "bfloat16", "m": [1], "n": 1, "k": 1,
        "latency": [1.0]}),
    ("nccl_perf.parquet", "2.27.3"): pd.DataFrame({
        "kernel_source": "NCCL", "nccl_dtype": ["half", "half", "int8"],
        "num_gpus": 8, "message_size": [1024, 2048, 2048], "op_name": "alltoall",
        "latency": [0.005, 0.006, 0.0061]}),
    ("wideep_deepep_normal_perf.parquet", "0.5.12"): pd.DataFrame({
        "kernel_source": "deepep", "node_num": [1, 2], "hidden_size": 7168,
        "num_token": 128, "num_topk": 8, "num_experts": 256, "dispatch_sms": 20,
        "dispatch_transmit_us": [100.0, 300.0], "dispatch_notify_us": [5.0, 0.0],
        "combine_sms": 24, "combine_transmit_us": [150.0, 400.0],
        "combine_notify_us": 0.0}),
    ("wideep_deepep_ll_perf.parquet", "0.5.12"): pd.DataFrame({
        "kernel_source": "deepep", "node_num": 1, "hidden_size": 7168,
        "num_token": [1, 128], "num_topk": 8, "num_experts": 256,
        "dispatch_avg_t_us": [10.0, 60.0], "combine_avg_t_us": [11.0, 90.0]}),
    ("moe_perf.parquet", "1.3.0rc20"): pd.DataFrame({
        "kernel_source": "cutlass", "moe_dtype": "bfloat16", "num_tokens": [1, 16],
        "hidden_size": 2048, "inter_size": 768, "topk": 8, "num_experts": 128,
        "moe_tp_size": 1, "moe_ep_size": 8, "distribution": "balanced",
        "latency": [0.02, float("nan")]}),
}


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    root = tmp_path / "systems"
    (root / "data" / "h100_sxm").mkdir(parents=True)
    (root / "h100_sxm.yaml").write_text(
        "data_dir: data/h100_sxm\nnode:\n  num_gpus_per_node: 8\n"
        "misc:\n  nccl_version: '2.27.3'\n")
    (root / "query_versions.yaml").write_text(
        "defaults:\n  trtllm: {current: '1.3.0rc20'}\n  sglang: {current: '0.5.14'}\n")
    where = {"gemm_perf.parquet": "gemm/trtllm", "nccl_perf.parquet": "comm/nccl",
             "wideep_deepep_normal_perf.parquet": "comm/sglang",
             "wideep_deepep_ll_perf.parquet": "comm/sglang", "moe_perf.parquet": "moe/trtllm"}
    for name, version in FRAMES:
        folder = root / "data" / "h100_sxm" / where[name] / version
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"PAR1")
    monkeypatch.setattr(aic, "_read_parquet",
                        lambda path: FRAMES[(path.name, path.parent.name)].copy())
    return root


def test_sources_list_what_is_there(fake_root):
    sources = aiconfigurator_sources("h100_sxm", data_root=fake_root)
    assert set(map(tuple, sources[["op", "framework", "version"]].values)) == {
        ("gemm", "trtllm", "1.3.0rc20"), ("gemm", "trtllm", "1.3.0rc23"),
        ("nccl", "nccl", "2.27.3"), ("deepep", "sglang", "0.5.12"),
        ("moe", "trtllm", "1.3.0rc20")}


def test_gemm_milliseconds_become_seconds_and_the_current_slot_is_the_default(fake_root):
    table = from_aiconfigurator("gemm", "h100_sxm", "trtllm", data_root=fake_root)
    assert table.frame["version"].unique().tolist() == ["1.3.0rc20"]  # not the newer rc23
    assert table.frame["latency_s"].tolist() == pytest.approx([10e-6, 11e-6, 12e-6])
    assert predict(table, m=2, n=4096, k=4096) == pytest.approx(11e-6)
    newer = from_aiconfigurator("gemm", "h100_sxm", "trtllm", "1.3.0rc23",
                                data_root=fake_root)
    assert len(newer) == 1


def test_nccl_message_size_is_elements_of_its_dtype(fake_root):
    table = from_aiconfigurator("nccl", "h100_sxm", data_root=fake_root)
    frame = table.frame
    assert frame["version"].unique().tolist() == ["2.27.3"]  # the system spec's version
    assert frame["bytes_per_rank"].tolist() == [2048, 4096, 2048]
    assert predict(table, dtype="half", bytes_per_rank=4096) == pytest.approx(6e-6)


def test_deepep_microseconds_phases_modes_and_ranks(fake_root):
    table = from_aiconfigurator("deepep", "h100_sxm", "sglang", data_root=fake_root)
    frame = table.frame
    assert frame["version"].unique().tolist() == ["0.5.12"]  # current 0.5.14 has none
    normal = frame[frame["mode"] == "normal"]
    dispatch = normal[normal["phase"] == "dispatch"]
    assert dispatch["latency_s"].tolist() == pytest.approx([105e-6, 300e-6])  # + notify
    assert dispatch["ep"].tolist() == [8, 16]  # node_num × GPUs per node
    assert normal[normal["phase"] == "combine"]["sms"].unique().tolist() == [24]
    low = table.select(mode="low_latency", phase="combine")
    assert low.frame["sms"].unique().tolist() == [0]
    assert predict(low, tokens=128) == pytest.approx(90e-6)


def test_rows_without_a_usable_latency_are_dropped_with_a_warning(fake_root):
    with pytest.warns(UserWarning, match="dropped 1 of 2 moe rows"):
        table = from_aiconfigurator("moe", "h100_sxm", "trtllm", data_root=fake_root)
    assert table.frame["latency_s"].tolist() == pytest.approx([20e-6])


def test_tables_for_several_ops(fake_root):
    tables = tables_from_aiconfigurator(
        "h100_sxm", sources={"gemm": ("trtllm", None), "nccl": ("nccl", None)},
        data_root=fake_root)
    assert sorted(tables) == ["gemm", "nccl"]


def test_what_is_not_there_is_named(fake_root):
    with pytest.raises(CostError, match=r"no gemm data for framework 'vllm' \(have: "
                                        r"trtllm/1.3.0rc20, trtllm/1.3.0rc23\)"):
        from_aiconfigurator("gemm", "h100_sxm", "vllm", data_root=fake_root)
    with pytest.raises(CostError, match="no gemm table .* versions with one: "
                                        "1.3.0rc20, 1.3.0rc23"):
        from_aiconfigurator("gemm", "h100_sxm", "trtllm", "9.9", data_root=fake_root)
    with pytest.raises(CostError, match=r"no data for system 'b200_sxm' \(systems: "
                                        r"h100_sxm\)"):
        from_aiconfigurator("gemm", "b200_sxm", data_root=fake_root)
    with pytest.raises(CostError, match="unknown op 'conv'"):
        from_aiconfigurator("conv", data_root=fake_root)


def test_a_changed_layout_is_refused_not_misread(fake_root, monkeypatch):
    monkeypatch.setattr(aic, "_read_parquet", lambda path: pd.DataFrame({"m": [1]}))
    with pytest.raises(CostError, match="missing columns gemm_dtype, n, k, latency"):
        from_aiconfigurator("gemm", data_root=fake_root)


def test_without_the_package_the_message_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(aic.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CostError, match="pip install aiconfigurator-core"):
        from_aiconfigurator("gemm")


def test_version_order():
    order = ["0.5.6.post2", "0.5.10", "1.3.0rc10", "1.3.0rc20", "1.3.0"]
    assert sorted(reversed(order), key=aic._version_key) == order


@pytest.mark.skipif(importlib.util.find_spec("aiconfigurator_core") is None
                    or importlib.util.find_spec("pyarrow") is None,
                    reason="aiconfigurator-core (and pyarrow) not installed")
def test_smoke_on_the_installed_package():
    gemm = from_aiconfigurator("gemm", "h100_sxm", "trtllm").select(dtype="bfloat16")
    assert len(gemm) > 1000
    t = predict(gemm, m=300, n=4096, k=7168)
    flops = 2 * 300 * 4096 * 7168
    assert 1e-6 < t < 1e-3 and flops / t < 989e12  # under H100's BF16 peak
    a2a = from_aiconfigurator("nccl", "h100_sxm").select(collective="alltoall")
    big = predict(a2a, dtype="half", ranks=8, bytes_per_rank=512 << 20)
    assert 200e9 < (512 << 20) / big * 7 / 8 < 450e9  # bus bandwidth, GB/s
