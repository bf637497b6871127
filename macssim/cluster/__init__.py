"""The SimPy cluster model: topologies, a flow-level network, and one forward step of an
MoE model on an expert-parallel cluster, measured per layer, per GPU and per phase.

This is the public API of the stage; everything else in the folder is private. Metric
names and definitions live in ``macssim.cluster.metrics`` (and ``docs/metrics.md``).
"""

from macssim.cluster._flows import FlowNetwork, max_min_rates
from macssim.cluster._graph import Routes
from macssim.cluster._load import LayerLoad, LayerRouting
from macssim.cluster._precision import PRECISION_PRESETS, Precision
from macssim.cluster._records import (
    GpuLayerRecord,
    LayerRecord,
    PhaseRecord,
    StepResult,
    chrome_trace,
    write_chrome_trace,
)
from macssim.cluster._requests import RequestAssigner, assign_requests_to_gpus
from macssim.cluster._step import SimOptions, simulate_step
from macssim.cluster._topology import (
    GpuSpec,
    NicSpec,
    NvlinkSpec,
    SwitchSpec,
    Topology,
    list_topology_presets,
    load_topology,
)

__all__ = [
    "FlowNetwork",
    "GpuLayerRecord",
    "GpuSpec",
    "LayerLoad",
    "LayerRecord",
    "LayerRouting",
    "NicSpec",
    "NvlinkSpec",
    "PRECISION_PRESETS",
    "PhaseRecord",
    "Precision",
    "RequestAssigner",
    "Routes",
    "SimOptions",
    "StepResult",
    "SwitchSpec",
    "Topology",
    "assign_requests_to_gpus",
    "chrome_trace",
    "list_topology_presets",
    "load_topology",
    "max_min_rates",
    "simulate_step",
    "write_chrome_trace",
]
