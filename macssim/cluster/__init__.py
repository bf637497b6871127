"""One forward step of an MoE model on an expert-parallel cluster, as SimPy processes:
each GPU a process through its phases, the all-to-alls on a shared flow network, every
operation costed by ``macssim.cost`` on the hardware of ``macssim.hardware``; measured per
layer, per GPU and per phase.

This is the public API of the stage; everything else in the folder is private. Metric
names and definitions live in ``macssim.cluster.metrics`` (and ``docs/metrics.md``).
"""

from macssim.cluster._load import LayerLoad, LayerRouting
from macssim.cluster._records import (
    GpuLayerRecord,
    LayerRecord,
    PhaseRecord,
    StepResult,
    chrome_trace,
    write_chrome_trace,
)
from macssim.cluster._requests import RequestAssigner, assign_requests_to_gpus
from macssim.cluster._step import SimOptions, alltoall_spec, simulate_step
from macssim.cluster._tensor_parallel import sequence_parallel_split

__all__ = [
    "GpuLayerRecord",
    "LayerLoad",
    "LayerRecord",
    "LayerRouting",
    "PhaseRecord",
    "RequestAssigner",
    "SimOptions",
    "StepResult",
    "alltoall_spec",
    "assign_requests_to_gpus",
    "chrome_trace",
    "sequence_parallel_split",
    "simulate_step",
    "write_chrome_trace",
]
