"""Sweeps small enough to run in seconds: the small synthetic trace (4 MoE layers of 32
experts), two policies, a handful of points."""

from __future__ import annotations

import pytest

from macssim.sweep import make_sweep


def small_sweep(trace, **values):
    """capacity factor × precision on the small trace: 4 points unless told otherwise."""
    axes = {"trace": [str(trace)], "topology": ["8xH100"],
            "capacity_factor": [1.0, 1.5], "precision": ["bf16", "fp8-experts"]}
    axes.update(values)
    return make_sweep(axes, {"policies": ["macs", "token-drop"], "steps": 2})


@pytest.fixture(scope="session")
def reference_table(small_trace, tmp_path_factory):
    """The small sweep run uninterrupted, in this process: (spec, path, bytes)."""
    from macssim.sweep import run_sweep

    spec = small_sweep(small_trace)
    path = tmp_path_factory.mktemp("sweep") / "reference.parquet"
    run_sweep(spec, path)
    return spec, path, path.read_bytes()
