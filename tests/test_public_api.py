"""The edges people touch: each stage's public surface, and optional imports staying out."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

STAGES = ["macssim", "macssim.trace", "macssim.policies", "macssim.placement",
          "macssim.cluster", "macssim.replay", "macssim.report", "macssim.capture",
          "macssim.cost", "macssim.hardware", "macssim.serve", "macssim.sweep"]

LAYERS = {
    # stage: the stages it may import (docs/architecture in README: data flows one way)
    "trace": set(),
    "hardware": set(),
    "placement": set(),
    "capture": {"trace"},
    "policies": {"trace"},
    "cost": {"hardware", "trace"},
    "cluster": {"cost", "hardware", "placement", "trace"},
    "replay": {"cluster", "cost", "hardware", "placement", "policies", "trace"},
    "report": {"replay", "cluster", "cost", "hardware", "placement", "policies", "trace"},
    "serve": {"replay", "report", "cluster", "cost", "hardware", "placement", "policies",
              "trace"},
    "sweep": {"replay", "report", "cluster", "cost", "hardware", "placement", "policies",
              "trace"},
}


@pytest.mark.parametrize("stage", sorted(LAYERS))
def test_stages_import_only_the_stages_before_them(stage):
    code = (f"import sys, macssim.{stage};"
            "print(','.join(sorted({n.split('.')[1] for n in sys.modules "
            "if n.startswith('macssim.') and not n.split('.')[1].startswith('_')})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.strip().split(",")) - {stage}
    assert loaded <= LAYERS[stage], f"macssim.{stage} imports {sorted(loaded - LAYERS[stage])}"


@pytest.mark.parametrize("name", STAGES)
def test_all_names_exist_and_are_public(name):
    module = importlib.import_module(name)
    assert module.__all__, f"{name} states no public surface"
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ lists {attr!r} but it is missing"
        assert not attr.startswith("_") or attr == "__version__"


def test_import_macssim_leaves_heavy_optional_packages_unloaded():
    code = ("import sys, macssim, macssim.trace, macssim.policies, macssim.capture, macssim.cli;"
            "print(','.join(m for m in ('transformers', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_policies_do_not_import_the_cluster():
    """Data flows one way: policies come before the cluster."""
    code = ("import sys, macssim.policies;"
            "print(','.join(m for m in sys.modules if m.startswith(('macssim.cluster', "
            "'macssim.replay', 'macssim.report', 'simpy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
