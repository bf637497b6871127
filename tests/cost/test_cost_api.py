"""macssim.cost's public surface, and that importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import macssim.cost


def test_all_names_exist_and_are_public():
    assert macssim.cost.__all__
    for name in macssim.cost.__all__:
        assert hasattr(macssim.cost, name), name
        assert not name.startswith("_")


def test_import_leaves_heavy_and_optional_packages_unloaded():
    # Not pyarrow: pandas 3 imports it itself wherever it is installed.
    code = ("import sys, macssim.cost;"
            "print(','.join(m for m in ('torch', 'aiconfigurator_core',"
            " 'macssim.cluster') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
