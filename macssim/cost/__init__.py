"""How long one operation takes, from measured tables: GEMM, fused MoE, NCCL collectives,
DeepEP dispatch/combine.

Why tables: the roofline and flow-network costs in ``macssim.cluster`` miss what real
kernels do at small and medium sizes (launch floors, SM budgets, per-token overheads;
see docs/validation.md). Measured latencies interpolated between neighbouring
measurements are right wherever the measurements are dense, and say so when they are
not. The format is macssim's own (docs/cost-tables.md), so a user's own measurements fit
beside NVIDIA aiconfigurator-core's, which :func:`from_aiconfigurator` converts.

    from macssim.cost import from_aiconfigurator, predict
    gemm = from_aiconfigurator("gemm", "h100_sxm", "trtllm")
    predict(gemm, dtype="bfloat16", m=300, n=4096, k=7168)    # seconds

Nothing here imports torch, SimPy or aiconfigurator-core at import time (pyarrow only
where pandas itself loads it).
"""

from macssim._errors import CostError
from macssim.cost._aiconfigurator import (
    aiconfigurator_sources,
    from_aiconfigurator,
    tables_from_aiconfigurator,
)
from macssim.cost._interpolate import (
    MAX_EXTRAPOLATION,
    Prediction,
    leave_one_out,
    predict,
    predict_detail,
)
from macssim.cost._table import OPS, CostTable, OpSchema, load_table, save_table, table_from_frame

__all__ = [
    "MAX_EXTRAPOLATION",
    "OPS",
    "CostError",
    "CostTable",
    "OpSchema",
    "Prediction",
    "aiconfigurator_sources",
    "from_aiconfigurator",
    "leave_one_out",
    "load_table",
    "predict",
    "predict_detail",
    "save_table",
    "table_from_frame",
    "tables_from_aiconfigurator",
]
