"""Replay: drive a trace through routing policies and the simulated cluster, side by side.

``replay(ReplayConfig(...))`` reads the trace one step at a time, asks each policy for a
dispatch plan per MoE layer, simulates the step on the topology, and collects plain
records; the report stage turns them into CSV and plots.
"""

from macssim.replay._run import (
    BASELINE_POLICY,
    ReplayConfig,
    ReplayResult,
    package_versions,
    plans_for_step,
    replay,
    torch_device,
)

__all__ = ["BASELINE_POLICY", "ReplayConfig", "ReplayResult", "package_versions",
           "plans_for_step", "replay", "torch_device"]
