"""``pip install .`` as a user outside the repository gets: the sdist and the wheel
carry the bundled data, and the quick start runs from another directory with the
installed package alone (no clone beside it).

Slow by nature (a build in an isolated environment, a new venv): one test, ~30 s."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLED = {"data/traces/default.mtrace", "data/topologies/8xH100.yaml",
           "data/topologies/64xH100.yaml", "data/scenarios/docvqa.yaml",
           "data/scenarios/chat.yaml"}


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    if not (REPO / "pyproject.toml").exists():
        pytest.skip("needs the source tree")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)])  # sdist -> wheel
    return out


def test_sdist_and_wheel_carry_the_bundled_data(dist):
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    in_wheel = {n.removeprefix("macssim/") for n in zipfile.ZipFile(wheel).namelist()}
    in_sdist = {n.split("/macssim/", 1)[-1] for n in tarfile.open(sdist).getnames()}
    assert BUNDLED <= in_wheel
    assert BUNDLED <= in_sdist


def test_the_installed_wheel_runs_the_quick_start_from_elsewhere(dist, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    site = Path(run([str(bin_dir / "python"), "-c",
                     "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The dependencies (torch and the rest) come from this test's environment, read-only,
    # after the new venv's own site-packages: macssim itself must come from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (wheel,) = dist.glob("*.whl")
    run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install",
         "--no-deps", "--no-index", "--quiet", str(wheel)])
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": ""}
    where = run([str(bin_dir / "python"), "-c", "import macssim; print(macssim.__file__)"],
                cwd=work, env=env).stdout
    assert Path(where.strip()).is_relative_to(venv), where
    listing = run(["macssim", "replay", "--list"], cwd=work, env=env).stdout
    assert "8xH100" in listing and "64xH100" in listing
    run(["macssim", "synth", "--model", "qwen3-vl-30b-a3b", "--scenario", "docvqa",
         "--steps", "2", "--batch-size", "1", "--out", "s.mtrace"], cwd=work, env=env)
    out = run(["macssim", "replay", "--policy", "macs,expanded-drop,token-drop",
               "--topology", "8xH100", "--steps", "2"], cwd=work, env=env).stdout
    assert "report: reports/default-8xH100-g1" in out
    assert (work / "reports" / "default-8xH100-g1" / "summary.csv").exists()
