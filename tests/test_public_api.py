"""The edges people touch: each stage's public surface, and optional imports staying out."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

STAGES = ["macssim", "macssim.trace", "macssim.policies", "macssim.placement",
          "macssim.cluster", "macssim.replay", "macssim.report", "macssim.capture",
          "macssim.cost"]


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
