"""How long one operation takes on given hardware: the stage between ``macssim.hardware``
(what the cluster is) and ``macssim.cluster`` (one step as SimPy processes).

Two backends answer the same questions:

- the **roofline** (``expert_phase_s``, ``attention_s``, ``gemm_s`` …): FLOPs and bytes
  against the GPU's calibrated peaks, with the kernel effects a roofline misses added in
  closed form (row tiles, small-expert efficiency, fixed kernel costs; docs/cluster.md);
- **measured tables** (``load_table``, ``predict``; ``MeasuredCosts``, the backend replay
  uses, built by ``cost_model_for`` from a topology's ``cost_tables``):
  per-operation latencies measured on real hardware in macssim's own format
  (docs/cost-tables.md), NVIDIA aiconfigurator-core's converted by
  :func:`from_aiconfigurator`, interpolated log-log between neighbouring measurements.

Collectives run on a max-min fair flow network (``FlowNetwork``) as the engines move their
bytes (``collective_s``, ``alltoall_s``; engines in ``macssim.hardware.ENGINES``).

    from macssim.cost import expert_phase_s, alltoall_s
    from macssim.hardware import load_topology
    topo = load_topology("8xH100")
    alltoall_s(topo, np.full((8, 8), 1 << 20))              # [8] seconds per GPU

Nothing here imports torch or aiconfigurator-core at import time.
"""

from macssim._errors import CostError
from macssim.cost._aiconfigurator import (
    aiconfigurator_sources,
    from_aiconfigurator,
    tables_from_aiconfigurator,
)
from macssim.cost._backend import ROOFLINE, CostModel, Roofline
from macssim.cost._collectives import (
    ALLREDUCE_FIXED_S,
    allreduce_legs,
    allreduce_s,
    alltoall_s,
    collective_s,
    count_routed,
    count_tokens,
    token_counts,
)
from macssim.cost._engines import (
    NCCL_FIT,
    Collective,
    Legs,
    TokenCounts,
    build_legs,
    engine_parameters,
    nccl_size_efficiency,
)
from macssim.cost._flows import FlowNetwork, max_min_rates
from macssim.cost._interpolate import (
    MAX_EXTRAPOLATION,
    Prediction,
    leave_one_out,
    predict,
    predict_detail,
)
from macssim.cost._measured import (
    COSTS_CHOICES,
    MeasuredCosts,
    cost_model_for,
    load_tables_dir,
)
from macssim.cost._precision import PRECISION_PRESETS, Precision, check_precision
from macssim.cost._published import benchmark_routing
from macssim.cost._roofline import (
    GROUPED_GEMM,
    KERNEL_FIXED_S,
    GroupedGemm,
    attention_s,
    dense_mlp_s,
    expert_phase_s,
    fp8_quantise_s,
    gemm_s,
    head_s,
    padded_rows,
    roofline_s,
    shared_experts_s,
    vision_s,
)
from macssim.cost._table import OPS, CostTable, OpSchema, load_table, save_table, table_from_frame

__all__ = [
    "benchmark_routing",
    "KERNEL_FIXED_S",
    "fp8_quantise_s",
    "gemm_s",
    "ALLREDUCE_FIXED_S",
    "allreduce_legs",
    "allreduce_s",
    "ROOFLINE",
    "COSTS_CHOICES",
    "CostModel",
    "MeasuredCosts",
    "Roofline",
    "Collective",
    "CostError",
    "CostTable",
    "FlowNetwork",
    "GROUPED_GEMM",
    "GroupedGemm",
    "Legs",
    "MAX_EXTRAPOLATION",
    "NCCL_FIT",
    "OPS",
    "OpSchema",
    "PRECISION_PRESETS",
    "Precision",
    "Prediction",
    "TokenCounts",
    "aiconfigurator_sources",
    "alltoall_s",
    "attention_s",
    "build_legs",
    "check_precision",
    "collective_s",
    "cost_model_for",
    "count_routed",
    "count_tokens",
    "dense_mlp_s",
    "engine_parameters",
    "expert_phase_s",
    "from_aiconfigurator",
    "head_s",
    "leave_one_out",
    "load_table",
    "load_tables_dir",
    "max_min_rates",
    "nccl_size_efficiency",
    "padded_rows",
    "predict",
    "predict_detail",
    "roofline_s",
    "save_table",
    "shared_experts_s",
    "table_from_frame",
    "tables_from_aiconfigurator",
    "token_counts",
    "vision_s",
]
