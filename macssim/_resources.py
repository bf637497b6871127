"""Where the bundled data lives: the repository's top-level folders ``traces/``,
``topologies/`` and ``scenarios/``. macssim is used from a clone installed with
``pip install -e .``, so these are found next to the package."""

from pathlib import Path

__all__ = ["REPO_ROOT", "TRACES_DIR", "TOPOLOGIES_DIR", "SCENARIOS_DIR", "DEFAULT_TRACE"]

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACES_DIR = REPO_ROOT / "traces"
TOPOLOGIES_DIR = REPO_ROOT / "topologies"
SCENARIOS_DIR = REPO_ROOT / "scenarios"
DEFAULT_TRACE = TRACES_DIR / "default.mtrace"
