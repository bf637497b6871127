"""Topology presets, YAML validation (errors name the file and the field), the graph and
the GPU-to-GPU routes."""

from __future__ import annotations

import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import yaml

from macssim import TopologyError
from macssim._resources import TOPOLOGIES_DIR
from macssim.hardware import build_graph, build_routes, list_topology_presets, load_topology

PRESETS = ["8xH100", "8xH200", "8xH800", "16xH100", "64xH100", "128xH100"]


def test_presets_are_listed_and_load():
    assert list_topology_presets() == PRESETS
    for name in PRESETS:
        topo = load_topology(name)
        assert topo.name == name
        assert topo.num_gpus == int(name.split("x")[0])
        assert topo.gpu.kind.startswith(name.split("x")[1])


def test_preset_names_are_case_insensitive():
    assert load_topology("16xh100").num_gpus == 16


@pytest.mark.parametrize("name", PRESETS)
def test_every_figure_in_a_preset_cites_a_source(name):
    for line in (TOPOLOGIES_DIR / f"{name}.yaml").read_text().splitlines():
        if re.match(r"\s*\w+:\s*[-+0-9.]", line) and not line.startswith("name:"):
            assert "#" in line, f"{name}.yaml: no source comment on {line.strip()!r}"


def test_multi_node_preset_has_one_nic_per_gpu_and_one_switch():
    topo = load_topology("16xH100")
    g = build_graph(topo)
    assert sum(1 for _, d in g.nodes(data=True) if d["kind"] == "nic") == 16
    assert {topo.nic_of(gpu) for gpu in range(8)} == set(range(8))
    assert all(nx.has_path(g, f"gpu{s}", f"gpu{d}") for s in range(16) for d in range(16))


def test_routes_follow_nvlink_inside_and_nics_between_nodes():
    topo = load_topology("16xH100")
    routes = build_routes(topo)
    names = [routes.link_names[i] for i in routes.links[0, 3] if i < routes.num_links]
    assert names == [("gpu0", "nvswitch0"), ("nvswitch0", "gpu3")]
    assert routes.latency_s[0, 3] == topo.nvlink.latency_s
    names = [routes.link_names[i] for i in routes.links[2, 13] if i < routes.num_links]
    # The PCIe hops (gpu -> nic, nic -> gpu) can never be the only bottleneck: pruned.
    assert names == [("gpu2", "nic0.2"), ("nic1.5", "gpu13")] or names == [
        ("nic0.2", "ibswitch"), ("ibswitch", "nic1.5")]
    assert routes.latency_s[2, 13] == pytest.approx(topo.nic.latency_s + topo.switch.latency_s)
    assert (routes.links[np.arange(16), np.arange(16)] == routes.num_links).all()


def test_blocking_fabric_adds_a_shared_core_link(tmp_path):
    data = yaml.safe_load((TOPOLOGIES_DIR / "16xH100.yaml").read_text())
    data["switch"].update(non_blocking=False, fabric_bw_bytes_per_s=100e9)
    path = tmp_path / "blocking.yaml"
    path.write_text(yaml.safe_dump(data))
    topo = load_topology(path)
    routes = build_routes(topo)
    core = routes.link_names.index(("ibswitch", "ibswitch.fabric"))
    assert core in routes.links[0, 9].tolist()
    assert routes.capacity_bytes_per_s[core] == 100e9


def test_with_nodes_scales_a_preset():
    topo = load_topology("8xH800").with_nodes(4)
    assert topo.num_gpus == 32 and build_routes(topo).links.shape[:2] == (32, 32)


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((TOPOLOGIES_DIR / "16xH100.yaml").read_text())
    mutate(data)
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["gpu"].pop("kind"), '"gpu.kind"'),
    (lambda d: d.pop("gpu"), 'missing field "gpu"'),
    (lambda d: d["nvlink"].update(bw_bytes_per_s=0),
     '"nvlink.bw_bytes_per_s" must be a finite number >= 1e+06 and <= 1e+15, got 0'),
    (lambda d: d["nic"].update(rate_bytes_per_s=-5), '"nic.rate_bytes_per_s" must be a finite'),
    (lambda d: d["gpu"].update(hbm_bytes_per_s="fast"),
     '"gpu.hbm_bytes_per_s" must be a finite number'),
    (lambda d: d["gpu"].update(compute_efficiency=1.5),
     '"gpu.compute_efficiency" must be a finite number >= 0.001 and <= 1, got 1.5'),
    (lambda d: d["nvlink"].update(latency_s=float("inf")),
     '"nvlink.latency_s" must be a finite number >= 0 and <= 1, got inf'),
    (lambda d: d["gpu"].update(bf16_flops_per_s=float("inf")),
     '"gpu.bf16_flops_per_s" must be a finite number'),
    (lambda d: d["nic"].update(efficiency=float("nan")), '"nic.efficiency" must be a finite'),
    (lambda d: d["switch"].update(latency_s=-1e-6), '"switch.latency_s" must be a finite'),
    (lambda d: d["switch"].update(non_blocking="yes please"),
     '"switch.non_blocking" must be true or false'),
    (lambda d: d.update(nodes=12500), '"nodes" × "gpus_per_node" = 12500 × 8 = 100000 GPUs'),
    (lambda d: d.update(gpus_per_node=100_000), '"gpus_per_node" must be an integer'),
    (lambda d: d.update(nodes=True), '"nodes" must be an integer'),
    (lambda d: d.update(nodes=2.0), '"nodes" must be an integer'),
    (lambda d: d["nic"].update(per_node=8.0), '"nic.per_node" must be an integer'),
    (lambda d: d.update(name=["a"]), '"name" must be a non-empty string'),
    (lambda d: d["gpu"].update(kind=""), '"gpu.kind" must be a non-empty string'),
    (lambda d: d.update(nvlink=[1, 2]), '"nvlink" must be a mapping'),
    (lambda d: d["nic"].update(per_node=3), '"nic.per_node" (3) must divide "gpus_per_node"'),
    (lambda d: d["nvlink"].update(bandwidth=1), "unknown key(s) ['bandwidth'] in \"nvlink\""),
    (lambda d: d.update(gpus=8), "unknown key(s) ['gpus'] in \"top level\""),
    (lambda d: d.pop("switch"), '"switch" is required when "nodes" > 1'),
    (lambda d: d["switch"].update(non_blocking=False),
     '"switch.fabric_bw_bytes_per_s" is required'),
    (lambda d: d.update(nodes=1.5), '"nodes" must be an integer'),
])
def test_errors_name_the_file_and_the_field(tmp_path, mutate, field):
    path = _write(tmp_path, mutate)
    with pytest.raises(TopologyError) as err:
        load_topology(path)
    assert str(path) in str(err.value)
    assert field in str(err.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(TopologyError, match="unknown topology preset '4xB200'; known: "
                                            "8xH100, 8xH200, 8xH800, 16xH100, 64xH100"):
        load_topology("4xB200")


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpu: [unclosed")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(TopologyError, match="must be a mapping"):
        load_topology(scalar)


def test_huge_counts_are_refused_before_anything_is_built(tmp_path):
    """100,000 GPUs would build O(GPUs²) routes: refused by the file reader, by a topology
    built in code and by ``with_nodes``, each naming what was asked."""
    import dataclasses

    from macssim._validate import Limits

    topo = load_topology("8xH800")
    with pytest.raises(TopologyError, match=r'"nodes" must be an integer >= 1 and <= 128'):
        topo.with_nodes(12_500)
    with pytest.raises(TopologyError, match=r'8xH800\.yaml: "nodes" must be an integer'):
        topo.with_nodes("4")
    assert topo.with_nodes(Limits.MAX_GPUS // 8).num_gpus == Limits.MAX_GPUS
    with pytest.raises(TopologyError, match="GPUs; at most 1024"):
        dataclasses.replace(topo, nodes=200, gpus_per_node=8, source="")
    with pytest.raises(TopologyError, match=r"topology 'x': \"nvlink.latency_s\" must be a "
                                            r"finite number >= 0 and <= 1, got inf"):
        dataclasses.replace(topo, name="x", source="",
                            nvlink=dataclasses.replace(topo.nvlink, latency_s=float("inf")))


def test_yaml_12_floats_and_the_bounded_loader(tmp_path):
    """``450e9`` (no dot) is a number, an alias bomb and python tags are refused."""
    text = (TOPOLOGIES_DIR / "8xH100.yaml").read_text().replace("450.0e+9", "450e9")
    path = tmp_path / "plain.yaml"
    path.write_text(text)
    assert load_topology(path).nvlink.bw_bytes_per_s == 450e9
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(TopologyError, match=r"bomb\.yaml: YAML aliases expand"):
        load_topology(bomb)
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(TopologyError, match=r"evil\.yaml: not valid YAML"):
        load_topology(evil)
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path)
