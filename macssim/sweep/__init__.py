"""Sweeps: many replays over the cartesian product of axes (traces or scenarios,
topologies, capacity factors, precisions, all-to-all engines), run as independent jobs
on local processes or a Ray cluster, their summaries streamed into one Parquet table;
and the cheapest configuration in such a table that meets an SLA.

This is the public API of the stage; everything else in the folder is private.
"""

from macssim.sweep._axes import AXES, Axis, SweepError
from macssim.sweep._recommend import (
    SEARCH,
    SLA_METRICS,
    Bound,
    Recommendation,
    default_kind,
    parse_bound,
    recommend,
    search_spec,
)
from macssim.sweep._run import SweepOutcome, run_sweep
from macssim.sweep._spec import MAX_POINTS, Point, SweepSpec, load_sweep, make_sweep
from macssim.sweep._table import FIXED_COLUMNS, read_results

__all__ = [
    "AXES",
    "FIXED_COLUMNS",
    "MAX_POINTS",
    "SLA_METRICS",
    "Axis",
    "Bound",
    "Point",
    "Recommendation",
    "SweepError",
    "SweepOutcome",
    "SweepSpec",
    "load_sweep",
    "make_sweep",
    "default_kind",
    "parse_bound",
    "read_results",
    "recommend",
    "search_spec",
    "SEARCH",
    "run_sweep",
]
