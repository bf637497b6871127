"""When requests arrive: a Poisson process at a given rate (seeded), or the timestamps of
a CSV file a user brings (a production log, a benchmark's schedule).

The file format, one request a line after a header:

    arrival_s,request_id        # the trace's own request ids
    0.000,0
    0.125,3

or ``arrival_s,trace_index`` (0 for the trace's first request, in order of first
appearance). ``arrival_s`` is seconds from the run's start, finite and >= 0; lines need
not be sorted (the scheduler serves in arrival order, ties in file order). Every error
names the file, the line and the field.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from macssim.serve._scheduler import ServeError

__all__ = ["Arrival", "poisson_arrivals", "read_arrivals"]

MAX_ARRIVALS_BYTES = 64 << 20
"""An arrivals file larger than this is refused before it is read (about 3 M lines)."""
MAX_REQUESTS = 1 << 20
"""Requests one run may serve."""
_COLUMNS = ("request_id", "trace_index")


@dataclass(frozen=True)
class Arrival:
    """One request: when it arrives and which recorded request's routing it replays."""

    arrival_s: float
    trace_index: int
    """Index into the trace's requests, in order of first appearance."""


def poisson_arrivals(rate_per_s: float, num_requests: int, num_trace_requests: int,
                     seed: int) -> list[Arrival]:
    """``num_requests`` arrivals of a Poisson process at ``rate_per_s`` (exponential gaps
    from numpy's PCG64 seeded with ``seed``; the first arrives after one gap); request i
    replays the trace's request ``i mod num_trace_requests``."""
    if isinstance(rate_per_s, bool) or not isinstance(rate_per_s, int | float) or not (
            math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ServeError(f'"rate_per_s" must be a finite number > 0 (requests per second), '
                         f"got {rate_per_s!r}")
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or not (
            1 <= num_requests <= MAX_REQUESTS):
        raise ServeError(f'"num_requests" must be an integer in [1, {MAX_REQUESTS}], got '
                         f"{num_requests!r}")
    if num_trace_requests < 1:
        raise ServeError("the trace holds no request to replay")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_per_s, size=num_requests)
    times = np.cumsum(gaps)
    return [Arrival(float(t), i % num_trace_requests) for i, t in enumerate(times)]


def read_arrivals(path: str | os.PathLike, trace_request_ids: Sequence[int]) -> list[Arrival]:
    """Arrivals from a CSV file (module docstring), checked line by line.

    Args:
        trace_request_ids: the trace's request ids in order of first appearance.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise ServeError(f"{path}: no such arrivals file")
        size = path.stat().st_size
        if size > MAX_ARRIVALS_BYTES:
            raise ServeError(f"{path}: {size} bytes; an arrivals file may hold at most "
                             f"{MAX_ARRIVALS_BYTES}")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ServeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ServeError(f"{path}: cannot read ({e.strerror or e})") from e
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None:
        raise ServeError(f"{path}: empty; expected a header arrival_s,request_id (or "
                         "arrival_s,trace_index) and one line per request")
    header = [h.strip() for h in header]
    if len(header) != 2 or header[0] != "arrival_s" or header[1] not in _COLUMNS:
        raise ServeError(f"{path}, line 1: header must be arrival_s,request_id or "
                         f"arrival_s,trace_index, got {','.join(header)!r}")
    by_id = {int(r): i for i, r in enumerate(trace_request_ids)}
    out: list[Arrival] = []
    for row in rows:
        line = rows.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise ServeError(f"{path}, line {line}: expected 2 fields (arrival_s,{header[1]}), "
                             f"got {len(row)}")
        t_text, r_text = row[0].strip(), row[1].strip()
        try:
            t = float(t_text)
        except ValueError:
            t = math.nan
        if not (math.isfinite(t) and t >= 0):
            raise ServeError(f'{path}, line {line}: "arrival_s" must be a finite number >= 0 '
                             f"(seconds), got {t_text!r}")
        try:
            r = int(r_text)
        except ValueError:
            raise ServeError(f'{path}, line {line}: "{header[1]}" must be an integer, got '
                             f"{r_text!r}") from None
        if header[1] == "request_id":
            if r not in by_id:
                known = ", ".join(map(str, list(by_id)[:10])) + (", …" if len(by_id) > 10
                                                                  else "")
                raise ServeError(f'{path}, line {line}: "request_id" {r} is not in the trace '
                                 f"(its requests: {known})")
            index = by_id[r]
        else:
            if not 0 <= r < len(by_id):
                raise ServeError(f'{path}, line {line}: "trace_index" must be in [0, '
                                 f"{len(by_id)}) (the trace holds {len(by_id)} requests), "
                                 f"got {r}")
            index = r
        out.append(Arrival(t, index))
        if len(out) > MAX_REQUESTS:
            raise ServeError(f"{path}: more than {MAX_REQUESTS} requests")
    if not out:
        raise ServeError(f"{path}: no requests after the header")
    return out
