"""Topologies: the hardware an expert-parallel deployment runs on, read from YAML.

Picture an HGX box: eight GPUs, each with its own HBM, all wired to NVSwitches
(NVLink 4: 450 GB/s per GPU each direction), and one 400 Gb/s ConnectX-7 NIC per GPU
leading to an InfiniBand switch that joins the boxes. A topology file says exactly
that: the GPU kind and its roofline figures, how many GPUs per node and how many
nodes, the NVLink figures, the NICs and the switch. Every figure carries its source
in a YAML comment in the preset files under ``topologies/``.

Files are read with the bounded loader of ``macssim._validate`` and validated once, on
load (and a topology built in code is held to the same ranges, ``_RANGES``): every figure
finite and physically plausible, every count an integer, at most ``Limits.MAX_GPUS`` GPUs.
Every error names the file and the field (``topologies/8xH100.yaml:
"nvlink.bw_bytes_per_s" must be a finite number >= 1e+06 and <= 1e+15, got 0``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macssim._errors import TopologyError
from macssim._resources import TOPOLOGIES_DIR
from macssim._validate import (
    Limits,
    brief,
    check_int,
    check_number,
    check_text,
    load_yaml,
    mapping,
)
from macssim.hardware._alltoall import AllToAllSpec, parse_alltoall

__all__ = [
    "CostTablesSpec",
    "GpuSpec",
    "NvlinkSpec",
    "NicSpec",
    "SwitchSpec",
    "Topology",
    "load_topology",
    "list_topology_presets",
]


@dataclass(frozen=True)
class GpuSpec:
    """One GPU kind and what its kernels can reach (the roofline's two roofs)."""

    kind: str
    """Name people use, e.g. ``H100-SXM5-80GB``."""
    bf16_flops_per_s: float
    """Dense BF16 tensor-core peak (datasheet, no sparsity)."""
    hbm_bytes_per_s: float
    """HBM bandwidth peak (datasheet)."""
    memory_bytes: float
    """HBM capacity."""
    compute_efficiency: float
    """Fraction of ``bf16_flops_per_s`` that GEMM kernels reach, in (0, 1]."""
    memory_efficiency: float
    """Fraction of ``hbm_bytes_per_s`` that streaming kernels reach, in (0, 1]."""
    fp8_flops_per_s: float | None = None
    """Dense FP8 tensor-core peak (datasheet, no sparsity; H100/H200/H800 SXM: 1,979e12).
    None: the GPU has no FP8 tensor cores, and FP8 compute (``Precision``) is refused.
    ``compute_efficiency`` applies to it unless ``fp8_compute_efficiency`` is given."""
    fp8_compute_efficiency: float | None = None
    """Fraction of ``fp8_flops_per_s`` that FP8 GEMM kernels reach, in (0, 1]; None: the
    same as ``compute_efficiency``. Measured FP8 GEMMs reach a far smaller share of their
    peak than BF16 ones (docs/validation.md)."""

    @property
    def achievable_flops_per_s(self) -> float:
        return self.bf16_flops_per_s * self.compute_efficiency

    @property
    def achievable_hbm_bytes_per_s(self) -> float:
        return self.hbm_bytes_per_s * self.memory_efficiency


@dataclass(frozen=True)
class NvlinkSpec:
    """Intra-node fabric: every GPU of a node reaches an NVSwitch plane."""

    bw_bytes_per_s: float
    """Per GPU, each direction (NVLink 4 on H100: 450e9)."""
    latency_s: float
    """Start-up latency of one GPU-to-GPU transfer inside a node."""
    efficiency: float
    """Fraction of ``bw_bytes_per_s`` that collectives reach on the wire, in (0, 1]."""


@dataclass(frozen=True)
class NicSpec:
    """Scale-out NICs of one node; GPU i of a node uses NIC ``i // (gpus_per_node / per_node)``."""

    per_node: int
    """NICs per node; must divide ``gpus_per_node``."""
    rate_bytes_per_s: float
    """Line rate of one NIC, each direction (400 Gb/s = 50e9 bytes/s)."""
    latency_s: float
    """Start-up latency of one RDMA transfer, NIC to NIC, without the switch."""
    efficiency: float
    """Fraction of ``rate_bytes_per_s`` reached on the wire, in (0, 1]."""


@dataclass(frozen=True)
class SwitchSpec:
    """The scale-out switch fabric joining the nodes (one logical switch)."""

    latency_s: float
    """Port-to-port latency."""
    non_blocking: bool = True
    """True: any permutation of NIC pairs runs at NIC line rate (full bisection)."""
    fabric_bw_bytes_per_s: float | None = None
    """Total bandwidth through the fabric when it is blocking (``non_blocking: false``)."""


@dataclass(frozen=True)
class CostTablesSpec:
    """Which measured per-operation tables describe this hardware (YAML ``cost_tables``):
    one (system, framework, version) of macssim's table format, e.g. aiconfigurator-core's
    ``h100_sxm`` / ``trtllm`` / ``1.3.0rc20`` (docs/cost-tables.md). Naming them does not
    require them: replay uses them where it finds them (``--tables`` or an installed
    aiconfigurator-core) and says so in ``run.json``."""

    system: str
    framework: str
    version: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Topology:
    """A cluster: ``nodes`` × ``gpus_per_node`` GPUs of one kind, NVLink inside a node,
    NICs and one switch between nodes. GPU ids run node-major: GPU g sits on node
    ``g // gpus_per_node``."""

    name: str
    gpu: GpuSpec
    nodes: int
    gpus_per_node: int
    nvlink: NvlinkSpec
    nic: NicSpec | None = None
    """Required when ``nodes > 1``."""
    switch: SwitchSpec | None = None
    """Required when ``nodes > 1``."""
    source: str = ""
    """File the topology was read from ("" when built in code)."""
    alltoall: AllToAllSpec = AllToAllSpec()
    """The all-to-all engine dispatch and combine run as (``nccl``, ``deepep-normal``,
    ``deepep-ll``, ``ideal``; see ``_engines``); an engine name is accepted too."""
    cost_tables: CostTablesSpec | None = None
    """The measured tables for this GPU kind (None: none named; the roofline answers)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "alltoall",
                           parse_alltoall(self.alltoall, self.source or f"topology {self.name!r}"))
        _check_topology(self)

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_node

    def nic_of(self, gpu: int) -> int:
        """Index, within its node, of the NIC GPU ``gpu`` sends through."""
        if self.nic is None:
            raise TopologyError(f"{self.source or self.name}: no NICs defined")
        return (gpu % self.gpus_per_node) // (self.gpus_per_node // self.nic.per_node)

    def with_nodes(self, nodes: int) -> Topology:
        """The same hardware with another node count (e.g. 8xH800 scaled to EP32); at most
        ``Limits.MAX_GPUS`` GPUs in all."""
        where = self.source or f"topology {self.name!r}"
        check_int(nodes, where, "nodes", low=1,
                  high=max(1, Limits.MAX_GPUS // self.gpus_per_node), error=TopologyError)
        return dataclasses.replace(self, nodes=nodes,
                                   name=f"{nodes * self.gpus_per_node}x{self.gpu.kind}")


# ---------------------------------------------------------------------------------------
# Validation: one table of ranges, checked for a file and for a topology built in code

_FLOPS = (1e9, 1e18)
"""FLOP/s of one GPU: 1 GFLOP/s (below that, a typo) to 1 EFLOP/s (B200: 2.25e15 dense
BF16, so a ~400x margin)."""
_BYTES_PER_S = (1e6, 1e15)
"""Bandwidth of one GPU's HBM, NVLink port or NIC: 1 MB/s to 1 PB/s (B200 HBM3e: 8e12,
NVLink 5: 900e9 each direction, an 800 Gb/s NIC: 1e11)."""
_FABRIC_BYTES_PER_S = (1e6, 1e18)
"""The whole switch fabric: up to MAX_GPUS ports of the largest link."""
_MEMORY_BYTES = (1e6, 1e15)
"""HBM capacity: 1 MB to 1 PB (B200: 192e9)."""
_LATENCY_S = (0.0, 1.0)
"""Start-up latency of one transfer or hop: 0 to 1 s (real ones are 0.1 to 20 µs)."""
_EFFICIENCY = (1e-3, 1.0)
"""Fraction of a peak that is reached: (0, 1]; below 0.1 % is a typo (and would turn a
finite transfer into an infinite one)."""

_NONE_OK = {"switch.fabric_bw_bytes_per_s", "gpu.fp8_flops_per_s",
            "gpu.fp8_compute_efficiency"}
"""Fields that may be None (absent): then not checked."""

# dotted field -> (low, high); numbers are finite and within [low, high]
_RANGES: dict[str, tuple[float, float]] = {
    "gpu.bf16_flops_per_s": _FLOPS,
    "gpu.fp8_flops_per_s": _FLOPS,
    "gpu.hbm_bytes_per_s": _BYTES_PER_S,
    "gpu.memory_bytes": _MEMORY_BYTES,
    "gpu.compute_efficiency": _EFFICIENCY,
    "gpu.fp8_compute_efficiency": _EFFICIENCY,
    "gpu.memory_efficiency": _EFFICIENCY,
    "nvlink.bw_bytes_per_s": _BYTES_PER_S,
    "nvlink.latency_s": _LATENCY_S,
    "nvlink.efficiency": _EFFICIENCY,
    "nic.rate_bytes_per_s": _BYTES_PER_S,
    "nic.latency_s": _LATENCY_S,
    "nic.efficiency": _EFFICIENCY,
    "switch.latency_s": _LATENCY_S,
    "switch.fabric_bw_bytes_per_s": _FABRIC_BYTES_PER_S,
}


def _check_topology(t: Topology) -> None:
    """Every field of ``t`` is what the cluster model can use: names non-empty, counts
    integers with at most ``Limits.MAX_GPUS`` GPUs in all, every figure finite and in
    ``_RANGES``. Raises TopologyError naming the file (or the topology) and the field."""
    where = t.source or f"topology {brief(t.name)}"
    err = TopologyError
    check_text(t.name, where, "name", error=err)
    for section, spec, kind in (("gpu", t.gpu, GpuSpec), ("nvlink", t.nvlink, NvlinkSpec),
                                ("nic", t.nic, NicSpec), ("switch", t.switch, SwitchSpec)):
        if spec is None and section in ("nic", "switch"):
            continue
        if not isinstance(spec, kind):
            raise err(f'{where}: "{section}" must be a {kind.__name__}, got {brief(spec)}')
    check_text(t.gpu.kind, where, "gpu.kind", error=err)
    check_int(t.gpus_per_node, where, "gpus_per_node", low=1, high=Limits.MAX_GPUS_PER_NODE,
              error=err)
    check_int(t.nodes, where, "nodes", low=1, error=err)
    if t.nodes * t.gpus_per_node > Limits.MAX_GPUS:
        raise err(f'{where}: "nodes" × "gpus_per_node" = {brief(t.nodes)} × {t.gpus_per_node} = '
                  f"{brief(t.nodes * t.gpus_per_node)} GPUs; at most {Limits.MAX_GPUS} are "
                  "supported (the network model holds GPU-to-GPU routes for every pair)")
    for field, (low, high) in _RANGES.items():
        section, name = field.split(".")
        spec = getattr(t, section)
        if spec is None:
            continue
        value = getattr(spec, name)
        if value is None and field in _NONE_OK:
            continue
        check_number(value, where, field, low=low, high=high, error=err)
    if t.cost_tables is not None:
        if not isinstance(t.cost_tables, CostTablesSpec):
            raise err(f'{where}: "cost_tables" must be a CostTablesSpec (system, framework, '
                      f"version), got {brief(t.cost_tables)}")
        for name in ("system", "framework", "version"):
            check_text(getattr(t.cost_tables, name), where, f"cost_tables.{name}", error=err)
    if t.nodes > 1 and (t.nic is None or t.switch is None):
        missing = "nic" if t.nic is None else "switch"
        raise err(f'{where}: "{missing}" is required when "nodes" > 1 (got nodes: {t.nodes})')
    if t.nic is not None:
        check_int(t.nic.per_node, where, "nic.per_node", low=1,
                  high=Limits.MAX_GPUS_PER_NODE, error=err)
        if t.gpus_per_node % t.nic.per_node:
            raise err(f'{where}: "nic.per_node" ({t.nic.per_node}) must divide '
                      f'"gpus_per_node" ({t.gpus_per_node})')
    if t.switch is not None:
        if not isinstance(t.switch.non_blocking, bool):
            raise err(f'{where}: "switch.non_blocking" must be true or false, got '
                      f"{brief(t.switch.non_blocking)}")
        if not t.switch.non_blocking and t.switch.fabric_bw_bytes_per_s is None:
            raise err(f'{where}: "switch.fabric_bw_bytes_per_s" is required when '
                      '"switch.non_blocking" is false')


# ---------------------------------------------------------------------------------------
# YAML loading

_SECTIONS: dict[str, tuple[str, ...]] = {
    "": ("name", "nodes", "gpus_per_node", "gpu", "nvlink", "nic", "switch", "alltoall",
         "cost_tables"),
    "gpu": ("kind", "bf16_flops_per_s", "hbm_bytes_per_s", "memory_bytes",
            "compute_efficiency", "memory_efficiency", "fp8_flops_per_s",
            "fp8_compute_efficiency"),
    "nvlink": ("bw_bytes_per_s", "latency_s", "efficiency"),
    "nic": ("per_node", "rate_bytes_per_s", "latency_s", "efficiency"),
    "switch": ("latency_s", "non_blocking", "fabric_bw_bytes_per_s"),
    "cost_tables": ("system", "framework", "version"),
}
_OPTIONAL = {"name", "nic", "switch", "alltoall", "cost_tables", "switch.non_blocking",
             "gpu.fp8_flops_per_s",
             "gpu.fp8_compute_efficiency",
             "switch.fabric_bw_bytes_per_s"}


class _Reader:
    """Reads the fields of one YAML mapping, naming the file and field on error; the
    values are checked by ``_check_topology`` once the topology is assembled."""

    def __init__(self, where: str, data: Any, section: str) -> None:
        self.where, self.section = where, section
        mapping(data, where, section, error=TopologyError)
        unknown = sorted(set(data) - set(_SECTIONS[section]))
        if unknown:
            raise TopologyError(f"{where}: unknown key(s) {brief(unknown)} in "
                                f'"{section or "top level"}"; known: {list(_SECTIONS[section])}')
        self.data = data

    def _key(self, name: str) -> str:
        return f"{self.section}.{name}" if self.section else name

    def raw(self, name: str) -> Any:
        if name not in self.data or self.data[name] is None:
            if self._key(name) in _OPTIONAL:
                return None
            raise TopologyError(f'{self.where}: missing field "{self._key(name)}"')
        return self.data[name]

    def sub(self, name: str) -> _Reader | None:
        value = self.raw(name)
        return None if value is None else _Reader(self.where, value, self._key(name))


def _parse(data: Any, where: str, default_name: str) -> Topology:
    top = _Reader(where, data, "")
    gpu_r = top.sub("gpu")
    if gpu_r is None or "kind" not in gpu_r.data:
        raise TopologyError(f'{where}: missing field "gpu.kind" (the GPU kind, e.g. '
                            f"H100-SXM5-80GB, with its figures)")
    gpu = GpuSpec(**{name: gpu_r.raw(name) for name in _SECTIONS["gpu"]})
    nv_r = top.sub("nvlink")
    if nv_r is None:
        raise TopologyError(f'{where}: missing field "nvlink"')
    nvlink = NvlinkSpec(**{name: nv_r.raw(name) for name in _SECTIONS["nvlink"]})
    nic = None
    if (nic_r := top.sub("nic")) is not None:
        nic = NicSpec(**{name: nic_r.raw(name) for name in _SECTIONS["nic"]})
    switch = None
    if (sw_r := top.sub("switch")) is not None:
        non_blocking = sw_r.raw("non_blocking")
        switch = SwitchSpec(latency_s=sw_r.raw("latency_s"),
                            non_blocking=True if non_blocking is None else non_blocking,
                            fabric_bw_bytes_per_s=sw_r.raw("fabric_bw_bytes_per_s"))
    cost_tables = None
    if (ct_r := top.sub("cost_tables")) is not None:
        cost_tables = CostTablesSpec(**{name: ct_r.raw(name)
                                        for name in _SECTIONS["cost_tables"]})
    name = top.raw("name")
    return Topology(
        name=default_name if name is None else name,
        gpu=gpu,
        nodes=top.raw("nodes"),
        gpus_per_node=top.raw("gpus_per_node"),
        nvlink=nvlink, nic=nic, switch=switch, source=where,
        alltoall=parse_alltoall(top.raw("alltoall"), where),
        cost_tables=cost_tables,
    )


def list_topology_presets() -> list[str]:
    """Names of the bundled presets (the ``topologies/*.yaml`` file stems)."""
    return sorted((p.stem for p in TOPOLOGIES_DIR.glob("*.yaml")), key=_preset_sort_key)


def _preset_sort_key(name: str) -> tuple[int, str]:
    head = name.split("x", 1)[0]
    return (int(head) if head.isdigit() else 0, name)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def load_topology(name_or_path: str | os.PathLike) -> Topology:
    """A preset by name (``8xH100``, case-insensitive) or a user's YAML file by path."""
    if not isinstance(name_or_path, str | os.PathLike):
        raise TopologyError(f"a topology is a preset name or a path, got {brief(name_or_path)}")
    text = os.fspath(name_or_path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise TopologyError(f"no topology given: a preset ({', '.join(list_topology_presets())}) "
                            "or a path to a YAML file")
    path = Path(text)
    if not (path.suffix in (".yaml", ".yml") or _exists(path) or os.sep in text):
        presets = {p.lower(): p for p in list_topology_presets()}
        if text.lower() not in presets:
            raise TopologyError(f"unknown topology preset {brief(text)}; known: "
                                f"{', '.join(list_topology_presets())} (or give a path to a "
                                f"YAML file)")
        path = TOPOLOGIES_DIR / f"{presets[text.lower()]}.yaml"
    return _load_file(path)


def _load_file(path: Path) -> Topology:
    data = load_yaml(path, what="topology", error=TopologyError)
    return _parse(data, str(path), default_name=path.stem)
