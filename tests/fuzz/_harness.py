"""What every fuzz case must show, whatever the input: either a result or a
``MacssimError`` whose message names the file, within a bounded time and memory, and
never another exception.

Memory is measured with ``tracemalloc`` (numpy reports its buffers to it), so a reader
that believes a header claiming 10⁹ experts and allocates for it fails the bound before
the machine runs out."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from click.testing import CliRunner, Result

from macssim._errors import MacssimError

MAX_SECONDS = 20.0
"""Per case: generous for a 2-core CI machine; a hang or an exponential walk blows it."""
MAX_PEAK_BYTES = 512 << 20
"""Per case: far above what a small fuzzed file needs, far below a believed huge claim."""


@dataclass(frozen=True)
class Outcome:
    value: Any
    error: MacssimError | None
    seconds: float
    peak_bytes: int


def run_bounded(fn: Callable[[], Any], *, name: str) -> Outcome:
    """Call ``fn``; a MacssimError is an outcome, any other exception fails the case."""
    tracemalloc.start()
    start = time.perf_counter()
    value, error = None, None
    try:
        value = fn()
    except MacssimError as e:
        error = e
    except Exception as e:  # noqa: BLE001 - the point of the fuzz suite
        raise AssertionError(f"{name}: {type(e).__name__} escaped instead of a "
                             f"MacssimError: {e}") from e
    finally:
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert seconds < MAX_SECONDS, f"{name}: took {seconds:.1f} s (bound {MAX_SECONDS} s)"
    assert peak < MAX_PEAK_BYTES, f"{name}: peak {peak >> 20} MiB (bound {MAX_PEAK_BYTES >> 20})"
    return Outcome(value, error, seconds, peak)


def assert_names(error: BaseException | str, *needles: str) -> None:
    """The message names each of ``needles`` (the file, and the field where one applies)."""
    text = str(error)
    for needle in needles:
        assert needle in text, f"message does not name {needle!r}: {text}"


def invoke_cli(args: list[str], *, name: str) -> Result:
    """Run ``macssim ARGS`` in-process; the only acceptable endings are exit 0 or a click
    error / MacssimError turned into an exit code by the CLI (SystemExit), never a
    traceback."""
    from macssim.cli import main

    outcome = run_bounded(lambda: CliRunner().invoke(main, args, catch_exceptions=True),
                          name=name)
    result: Result = outcome.value
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{name}: macssim {' '.join(args)} raised "
                             f"{type(result.exception).__name__}: {result.exception}\n"
                             f"{result.output}") from result.exception
    assert "Traceback" not in result.output, f"{name}: traceback in output:\n{result.output}"
    return result


DELETE = object()
"""With ``edited``: remove the key instead of setting it."""


def edited(obj: Any, path: tuple, value: Any) -> Any:
    """A deep copy of JSON-like ``obj`` with the value at ``path`` replaced (or deleted)."""
    obj = json.loads(json.dumps(obj))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj
