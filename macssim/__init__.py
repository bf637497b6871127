"""macssim: plan expert-parallel MoE inference clusters by replaying real routing.

The package is laid out as the data flows: ``trace`` (how routing is stored and
synthesised) -> ``capture`` (routing from a real model) -> ``policies`` (capacity
and rerouting, in torch) -> ``placement`` (expert -> GPU) -> ``cluster`` (SimPy model
of the EP cluster) -> ``report`` (CSV, plots). Imports only point downstream.
"""

from macssim._errors import (
    CaptureError,
    CostError,
    MacssimError,
    PolicyError,
    ReportError,
    TopologyError,
    TraceError,
)

__version__ = "0.1.0"

__all__ = [
    "CaptureError",
    "CostError",
    "MacssimError",
    "PolicyError",
    "ReportError",
    "TopologyError",
    "TraceError",
    "__version__",
]
