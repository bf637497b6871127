"""Topologies: the hardware an expert-parallel deployment runs on, read from YAML.

Picture an HGX box: eight GPUs, each with its own HBM, all wired to NVSwitches
(NVLink 4: 450 GB/s per GPU each direction), and one 400 Gb/s ConnectX-7 NIC per GPU
leading to an InfiniBand switch that joins the boxes. A topology file says exactly
that: the GPU kind and its roofline figures, how many GPUs per node and how many
nodes, the NVLink figures, the NICs and the switch. Every figure carries its source
in a YAML comment in the preset files under ``topologies/``.

Files are validated once, on load; every error names the file and the field
(``topologies/8xH100.yaml: "nvlink.bw_bytes_per_s" must be > 0, got 0``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from macssim._errors import TopologyError
from macssim._resources import TOPOLOGIES_DIR

if TYPE_CHECKING:
    import networkx as nx

    from macssim.cluster._graph import Routes

__all__ = [
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

    def __post_init__(self) -> None:
        where = self.source or f"topology {self.name!r}"
        if self.nodes <= 0 or self.gpus_per_node <= 0:
            raise TopologyError(f'{where}: "nodes" and "gpus_per_node" must be > 0, got '
                                f"{self.nodes} and {self.gpus_per_node}")
        if self.nodes > 1 and (self.nic is None or self.switch is None):
            missing = "nic" if self.nic is None else "switch"
            raise TopologyError(f'{where}: "{missing}" is required when "nodes" > 1 '
                                f"(got nodes: {self.nodes})")
        if self.nic is not None and self.gpus_per_node % self.nic.per_node:
            raise TopologyError(f'{where}: "nic.per_node" ({self.nic.per_node}) must divide '
                                f'"gpus_per_node" ({self.gpus_per_node})')

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
        """The same hardware with another node count (e.g. 8xH800 scaled to EP32)."""
        return dataclasses.replace(self, nodes=nodes,
                                   name=f"{nodes * self.gpus_per_node}x{self.gpu.kind}")

    @functools.cached_property
    def graph(self) -> nx.DiGraph:
        """GPUs, NVSwitch per node, NICs and the switch as a directed networkx graph; each
        edge carries ``bw_bytes_per_s``, ``efficiency``, ``latency_s``, ``capacity_bytes_per_s``
        and a ``link`` index."""
        from macssim.cluster._graph import build_graph

        return build_graph(self)

    @functools.cached_property
    def routes(self) -> Routes:
        """GPU-to-GPU paths as link indices and latencies (see ``_graph.Routes``)."""
        from macssim.cluster._graph import build_routes

        return build_routes(self)


# ---------------------------------------------------------------------------------------
# YAML loading

_SECTIONS: dict[str, tuple[str, ...]] = {
    "": ("name", "nodes", "gpus_per_node", "gpu", "nvlink", "nic", "switch"),
    "gpu": ("kind", "bf16_flops_per_s", "hbm_bytes_per_s", "memory_bytes",
            "compute_efficiency", "memory_efficiency"),
    "nvlink": ("bw_bytes_per_s", "latency_s", "efficiency"),
    "nic": ("per_node", "rate_bytes_per_s", "latency_s", "efficiency"),
    "switch": ("latency_s", "non_blocking", "fabric_bw_bytes_per_s"),
}
_OPTIONAL = {"name", "nic", "switch", "switch.non_blocking", "switch.fabric_bw_bytes_per_s"}


class _Reader:
    """Reads typed fields out of one YAML mapping, naming the file and field on error."""

    def __init__(self, where: str, data: Any, section: str) -> None:
        self.where, self.section = where, section
        if not isinstance(data, dict):
            raise TopologyError(f'{where}: "{section or "top level"}" must be a mapping, got '
                                f"{type(data).__name__}")
        unknown = sorted(set(map(str, data)) - set(_SECTIONS[section]))
        if unknown:
            raise TopologyError(f"{where}: unknown key(s) {unknown} in "
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

    def number(self, name: str, *, positive: bool = True, at_most: float | None = None,
               integer: bool = False) -> float | int | None:
        value = self.raw(name)
        if value is None:
            return None
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise TopologyError(f'{self.where}: "{self._key(name)}" must be a number, got '
                                f"{value!r}") from None
        if integer and number != int(number):
            raise TopologyError(f'{self.where}: "{self._key(name)}" must be an integer, got '
                                f"{value!r}")
        if positive and not number > 0:
            raise TopologyError(f'{self.where}: "{self._key(name)}" must be > 0, got {value!r}')
        if not positive and not number >= 0:
            raise TopologyError(f'{self.where}: "{self._key(name)}" must be >= 0, got {value!r}')
        if at_most is not None and number > at_most:
            raise TopologyError(f'{self.where}: "{self._key(name)}" must be <= {at_most}, got '
                                f"{value!r}")
        return int(number) if integer else number

    def text(self, name: str) -> str:
        value = self.raw(name)
        if not isinstance(value, str) or not value.strip():
            raise TopologyError(f'{self.where}: "{self._key(name)}" must be a non-empty string, '
                                f"got {value!r}")
        return value.strip()

    def sub(self, name: str) -> _Reader | None:
        value = self.raw(name)
        return None if value is None else _Reader(self.where, value, self._key(name))


def _parse(data: Any, where: str, default_name: str) -> Topology:
    top = _Reader(where, data, "")
    gpu_r = top.sub("gpu")
    if gpu_r is None or "kind" not in gpu_r.data:
        raise TopologyError(f'{where}: missing field "gpu.kind" (the GPU kind, e.g. '
                            f"H100-SXM5-80GB, with its figures)")
    gpu = GpuSpec(
        kind=gpu_r.text("kind"),
        bf16_flops_per_s=gpu_r.number("bf16_flops_per_s"),
        hbm_bytes_per_s=gpu_r.number("hbm_bytes_per_s"),
        memory_bytes=gpu_r.number("memory_bytes"),
        compute_efficiency=gpu_r.number("compute_efficiency", at_most=1.0),
        memory_efficiency=gpu_r.number("memory_efficiency", at_most=1.0),
    )
    nv_r = top.sub("nvlink")
    if nv_r is None:
        raise TopologyError(f'{where}: missing field "nvlink"')
    nvlink = NvlinkSpec(
        bw_bytes_per_s=nv_r.number("bw_bytes_per_s"),
        latency_s=nv_r.number("latency_s", positive=False),
        efficiency=nv_r.number("efficiency", at_most=1.0),
    )
    nic = None
    if (nic_r := top.sub("nic")) is not None:
        nic = NicSpec(
            per_node=nic_r.number("per_node", integer=True),
            rate_bytes_per_s=nic_r.number("rate_bytes_per_s"),
            latency_s=nic_r.number("latency_s", positive=False),
            efficiency=nic_r.number("efficiency", at_most=1.0),
        )
    switch = None
    if (sw_r := top.sub("switch")) is not None:
        non_blocking = sw_r.raw("non_blocking")
        if non_blocking is None:
            non_blocking = True
        if not isinstance(non_blocking, bool):
            raise TopologyError(f'{where}: "switch.non_blocking" must be true or false, got '
                                f"{non_blocking!r}")
        fabric = sw_r.number("fabric_bw_bytes_per_s")
        if not non_blocking and fabric is None:
            raise TopologyError(f'{where}: "switch.fabric_bw_bytes_per_s" is required when '
                                f'"switch.non_blocking" is false')
        switch = SwitchSpec(latency_s=sw_r.number("latency_s", positive=False),
                            non_blocking=non_blocking, fabric_bw_bytes_per_s=fabric)
    name = top.raw("name")
    return Topology(
        name=str(name) if name is not None else default_name,
        gpu=gpu,
        nodes=top.number("nodes", integer=True),
        gpus_per_node=top.number("gpus_per_node", integer=True),
        nvlink=nvlink, nic=nic, switch=switch, source=where,
    )


def list_topology_presets() -> list[str]:
    """Names of the bundled presets (the ``topologies/*.yaml`` file stems)."""
    return sorted((p.stem for p in TOPOLOGIES_DIR.glob("*.yaml")), key=_preset_sort_key)


def _preset_sort_key(name: str) -> tuple[int, str]:
    head = name.split("x", 1)[0]
    return (int(head) if head.isdigit() else 0, name)


def load_topology(name_or_path: str | os.PathLike) -> Topology:
    """A preset by name (``8xH100``, case-insensitive) or a user's YAML file by path."""
    text = os.fspath(name_or_path)
    path = Path(text)
    if not (path.suffix in (".yaml", ".yml") or path.exists() or os.sep in text):
        presets = {p.lower(): p for p in list_topology_presets()}
        if text.lower() not in presets:
            raise TopologyError(f"unknown topology preset {text!r}; known: "
                                f"{', '.join(list_topology_presets())} (or give a path to a "
                                f"YAML file)")
        path = TOPOLOGIES_DIR / f"{presets[text.lower()]}.yaml"
    return _load_file(path)


def _load_file(path: Path) -> Topology:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TopologyError(f"{where}: cannot read topology file ({e.strerror})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TopologyError(f"{where}: not valid YAML ({e})") from e
    return _parse(data, where, default_name=path.stem)
