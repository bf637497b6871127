"""Whether a process still runs: how writers tell a killed writer's temporary file (safe
to remove) from a live one's (never touched)."""

from __future__ import annotations

import os

__all__ = ["process_alive"]


def process_alive(pid: int) -> bool:
    """True if a process ``pid`` exists (even one we may not signal), or if ``pid`` is
    too large to be one: a name we cannot read is never treated as a dead writer's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
