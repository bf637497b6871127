"""Where the bundled data lives: ``macssim/data/`` inside the package — the default
trace, the topology presets and the synthetic scenarios — found through
``importlib.resources`` so that a wheel installed anywhere (``pip install macssim``, not
only an editable clone) carries and finds them.

Readers need real paths (a trace is read with ``seek``; messages name the file), so a
package imported from a zip is extracted once, for the life of the process."""

from __future__ import annotations

import atexit
import contextlib
import importlib.resources
from pathlib import Path

__all__ = ["DATA_DIR", "TRACES_DIR", "TOPOLOGIES_DIR", "SCENARIOS_DIR", "DEFAULT_TRACE"]


def _data_dir() -> Path:
    files = importlib.resources.files("macssim") / "data"
    if isinstance(files, Path):
        return files
    stack = contextlib.ExitStack()  # a zipped install: extract once, clean up at exit
    atexit.register(stack.close)
    return stack.enter_context(importlib.resources.as_file(files))


DATA_DIR = _data_dir()
TRACES_DIR = DATA_DIR / "traces"
TOPOLOGIES_DIR = DATA_DIR / "topologies"
SCENARIOS_DIR = DATA_DIR / "scenarios"
DEFAULT_TRACE = TRACES_DIR / "default.mtrace"
