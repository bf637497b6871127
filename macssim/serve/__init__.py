"""Serving-level replay: requests arrive, a vLLM/SGLang-style scheduler batches them step
by step on data-parallel attention ranks, and each step runs on the simulated cluster
with the routing the trace recorded for its requests' tokens (``docs/serve.md``).

This is the public API of the stage; everything else in the folder is private.
"""

from macssim.serve._arrivals import Arrival, poisson_arrivals, read_arrivals
from macssim.serve._metrics import Sla
from macssim.serve._run import ServeConfig, ServeResult, serve
from macssim.serve._scheduler import (
    Chunk,
    RequestSpec,
    RequestTiming,
    Schedule,
    SchedulerConfig,
    ServeError,
    StepBatch,
    StepCost,
    StepRecord,
    run_scheduler,
)
from macssim.serve._write import write_serve_report

__all__ = [
    "Arrival",
    "Chunk",
    "RequestSpec",
    "RequestTiming",
    "Schedule",
    "SchedulerConfig",
    "ServeConfig",
    "ServeError",
    "ServeResult",
    "Sla",
    "StepBatch",
    "StepCost",
    "StepRecord",
    "poisson_arrivals",
    "read_arrivals",
    "run_scheduler",
    "serve",
    "write_serve_report",
]
