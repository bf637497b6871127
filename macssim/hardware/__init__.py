"""What the cluster is: GPUs and their specs, NVLink, NICs and switches (topology YAML
files and presets), the routes between GPUs, and which all-to-all engine it runs.

Every later stage (``macssim.cost``, ``macssim.cluster``) reads the hardware from here;
nothing here knows what an operation costs.
"""

from macssim.hardware._alltoall import ENGINES, AllToAllSpec, parse_alltoall
from macssim.hardware._graph import Routes, build_graph, build_routes, gpu_path
from macssim.hardware._topology import (
    GpuSpec,
    NicSpec,
    NvlinkSpec,
    SwitchSpec,
    Topology,
    list_topology_presets,
    load_topology,
)

__all__ = [
    "ENGINES",
    "AllToAllSpec",
    "GpuSpec",
    "NicSpec",
    "NvlinkSpec",
    "Routes",
    "SwitchSpec",
    "Topology",
    "build_graph",
    "build_routes",
    "gpu_path",
    "list_topology_presets",
    "load_topology",
    "parse_alltoall",
]
