"""Predict one operation's latency from measured points: log-log linear interpolation.

Why log-log: kernel and collective latencies over sizes spanning five orders of magnitude
are close to piecewise power laws (a flat launch/latency floor, then time ∝ size^a), and
a straight line in (log size, log time) between neighbouring measurements follows both
regimes and the bend between them; linear interpolation in plain units overstates small
sizes between widely spaced points (a 1→1024 token bracket). A power law is reproduced
exactly.

The rule, per query:

1. Rows must match every exact key (system, framework, version, kernel, dtype and the
   op's integer keys: experts, topk, ranks …) exactly. Never interpolated: a different
   expert count or rank count is a different kernel configuration. A key the caller
   leaves out is filled in only when the table holds a single value for it.
2. Among those rows, the size keys (m, n, k; tokens; bytes_per_rank) are interpolated one
   after the other, in the schema's order, multilinearly in log space: along the first
   size key, take the nearest measured values below and above the query for which the
   remaining keys can be answered, answer the remaining keys at each, and join the two
   answers on a straight line in (log size, log latency). A size measured exactly is used
   as is. Where the grid has a hole, the nearest values that do answer are taken, so a
   hole widens the bracket rather than failing the query.
3. A size outside the measured range of its key is refused (:class:`CostError`), unless
   ``extrapolate=True``; then a size at most :data:`MAX_EXTRAPOLATION` times beyond the
   largest measured value (or below the smallest) is extrapolated along the line
   through the two outermost measurements, and :attr:`Prediction.extrapolated` says so.
   Farther out is refused in every case.
4. Repeated measurements of the same keys are combined by their median.
5. Monotone lower envelope along the last size key (tokens, bytes_per_rank; GEMM: k at
   each measured (m, n)): each measured value is replaced by the smallest value measured
   at that size or any larger size of the same sweep, ``t'(x_i) = min_{j >= i} t(x_j)``,
   before interpolating. Why: the latency of a kernel or collective is physically
   non-decreasing in its size (the best kernel for a larger size can run the smaller one
   by masking or padding, in no more time), and timing noise is one-sided (interference,
   clock ramps, a poor tactic chosen by the autotuner only ever add time), so a value
   above a later, larger one is an upward artefact and the larger size's time is the
   tighter estimate of what the smaller one costs. A sweep that is already
   non-decreasing is left untouched (the envelope is the identity there), so it
   interpolates exactly as without the rule. Not a least-squares (isotonic) fit: that
   pools an upward spike with the values after it and raises them; the envelope never
   raises a measurement. Only the last size key: the tree holds that key's sweeps as
   leaf rows; m and n are interpolated as measured.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from macssim._errors import CostError
from macssim._validate import brief
from macssim.cost._table import OPS, CostTable

__all__ = ["MAX_EXTRAPOLATION", "Prediction", "leave_one_out", "leave_one_out_points",
           "predict", "predict_detail"]

MAX_EXTRAPOLATION = 2.0
"""How far beyond the measured range ``extrapolate=True`` reaches, as a size ratio."""


@dataclass(frozen=True)
class Prediction:
    """A predicted latency and how it was obtained."""

    latency_s: float
    extrapolated: bool
    """True when some size key lay outside the measured range (only with
    ``extrapolate=True``)."""
    exact: bool
    """True when every size key was measured exactly (the value is a measurement, or the
    median of repeated ones, after the monotone envelope of rule 5)."""


class _Miss(Exception):
    """A sub-grid cannot answer; carries why, for the message."""

    def __init__(self, key: str, value: float, low: float, high: float, why: str):
        super().__init__(why)
        self.key, self.value, self.low, self.high, self.why = key, value, low, high, why


class _Grid:
    """Measured points of one exact-key group as a tree over the size keys: level i maps
    each measured value of size key i (sorted) to the subtree of the remaining keys; the
    leaves hold log latency. A tree, not a dense array, because real sweeps have holes."""

    __slots__ = ("keys", "values", "children", "raw", "monotone")

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys
        self.values: list[float] = []
        self.children: list[Any] = []  # _Grid, or float (log latency) at the last level
        self.raw: list[float] = []  # at the last level: the medians before the envelope
        self.monotone = True

    @classmethod
    def build(cls, sizes: np.ndarray, log_lat: np.ndarray, keys: tuple[str, ...], *,
              monotone: bool = True) -> _Grid:
        grid = cls(keys)
        order = np.lexsort(tuple(sizes[:, i] for i in reversed(range(sizes.shape[1]))))
        sizes, log_lat = sizes[order], log_lat[order]
        grid._fill(sizes, log_lat, 0, monotone)
        return grid

    def _fill(self, sizes: np.ndarray, log_lat: np.ndarray, level: int,
              monotone: bool) -> None:
        col = sizes[:, level]
        cuts = np.flatnonzero(np.diff(col)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(col)], strict=True):
            self.values.append(float(col[lo]))
            if level == sizes.shape[1] - 1:
                self.raw.append(float(np.median(log_lat[lo:hi])))
            else:
                child = _Grid(self.keys)
                child._fill(sizes[lo:hi], log_lat[lo:hi], level + 1, monotone)
                self.children.append(child)
        if self.raw:
            self.monotone = monotone
            self.children = _envelope(self.raw) if monotone else list(self.raw)

    # -- queries ---------------------------------------------------------------------

    def answer(self, query: tuple[float, ...], level: int, extrapolate: bool,
               skip: tuple[float, ...] | None) -> tuple[float, bool, bool]:
        """(log latency, extrapolated, exact) at ``query`` from this subtree. ``skip``:
        one full point to treat as absent (leave-one-out)."""
        x = query[level]
        key = self.keys[level]
        values = self.values
        inner: list[_Miss] = []  # why sub-grids failed: the likelier cause to report
        i = bisect.bisect_left(values, x)
        # Exactly measured: use it, if the rest answers there.
        if i < len(values) and values[i] == x:
            try:
                return self._child(i, query, level, extrapolate, skip)
            except _Miss as miss:  # a hole (or the left-out point): bracket around it
                inner.append(miss)
            start_above = i + 1
        else:
            start_above = i
        below = self._first(range(i - 1, -1, -1), query, level, extrapolate, skip, inner)
        above = self._first(range(start_above, len(values)), query, level, extrapolate,
                            skip, inner)
        if below and above:
            return _line(x, below[0], above[0], extra=False)
        lo, hi = values[0], values[-1]
        outside = x < lo or x > hi
        real = [m for m in inner if m.why != "left out"]
        if not extrapolate or not (below or above):
            if outside:
                side = "below the smallest" if x < lo else "above the largest"
                hint = (f"; pass extrapolate=True to reach up to {MAX_EXTRAPOLATION:g}× "
                        "beyond it") if not extrapolate else ""
                raise _Miss(key, x, lo, hi, f"{key}={x:g} is {side} measured value "
                            f"({lo:g} … {hi:g}){hint}")
            if real:
                raise real[-1]
            raise _Miss(key, x, lo, hi, f"no measured {key} on both sides of {x:g} answers "
                        "the other keys")
        have = below or above
        edge = have[0][0]
        ratio = edge / x if x < edge else x / edge
        if ratio > MAX_EXTRAPOLATION * (1 + 1e-12):
            raise _Miss(key, x, lo, hi, f"{key}={x:g} is {ratio:.3g}× beyond the measured "
                        f"{'smallest' if x < edge else 'largest'} value {edge:g} (range "
                        f"{lo:g} … {hi:g}); extrapolation reaches at most "
                        f"{MAX_EXTRAPOLATION:g}×")
        second = self._first(
            range(have[1] - 1, -1, -1) if x > edge else range(have[1] + 1, len(values)),
            query, level, extrapolate, skip, inner)
        if not second:
            raise _Miss(key, x, lo, hi, f"{key}={x:g} lies outside the measured range and "
                        f"only one {key} is measured there; nothing to extrapolate along")
        return _line(x, second[0], have[0], extra=True)

    def _child(self, i: int, query, level, extrapolate, skip) -> tuple[float, bool, bool]:
        child = self.children[i]
        if isinstance(child, _Grid):
            return child.answer(query, level + 1, extrapolate,
                                skip if skip is None or skip[level] == self.values[i]
                                else None)
        if skip is not None:
            left = skip[level]
            if left == self.values[i]:
                raise _Miss(self.keys[level], query[level], self.values[0],
                            self.values[-1], "left out")
            j = bisect.bisect_left(self.values, left)
            if self.monotone and i < j < len(self.values) and self.values[j] == left:
                # The envelope without the left-out point: it bounded only smaller sizes.
                after = self.children[j + 1] if j + 1 < len(self.values) else math.inf
                child = min(min(self.raw[i:j]), after)
        return child, False, True

    def _first(self, indices, query, level, extrapolate, skip, inner):
        """The first index in ``indices`` whose subtree answers: ((value, log latency,
        extrapolated), index), or None; each subtree's failure is appended to ``inner``."""
        for j in indices:
            try:
                log_t, extra, _ = self._child(j, query, level, extrapolate, skip)
            except _Miss as miss:
                inner.append(miss)
                continue
            return (self.values[j], log_t, extra), j
        return None


def _envelope(log_lat: list[float]) -> list[float]:
    """Rule 5: each value replaced by the smallest at that index or after it."""
    out = list(log_lat)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return out


def _line(x: float, a: tuple[float, float, bool], b: tuple[float, float, bool], *,
          extra: bool) -> tuple[float, bool, bool]:
    (xa, ya, ea), (xb, yb, eb) = a, b
    t = (math.log(x) - math.log(xa)) / (math.log(xb) - math.log(xa))
    return ya + t * (yb - ya), extra or ea or eb, False


# ------------------------------------------------------------------------------------


def predict(table: CostTable, *, extrapolate: bool = False, **keys: Any) -> float:
    """Latency in seconds of one operation at ``keys`` (every size key, and each exact
    key the table holds more than one value of). See the module docstring for the rule;
    a query the measurements cannot answer raises :class:`CostError` saying why."""
    return predict_detail(table, extrapolate=extrapolate, **keys).latency_s


def predict_detail(table: CostTable, *, extrapolate: bool = False,
                   **keys: Any) -> Prediction:
    """:func:`predict`, also saying whether the value was extrapolated or measured."""
    grid, query = _locate(table, keys)
    try:
        log_t, extra, exact = grid.answer(query, 0, extrapolate, None)
    except _Miss as miss:
        raise CostError(f"{table.where}: cannot predict {table.op} at "
                        f"{_describe(keys)}: {miss.why}") from None
    return Prediction(latency_s=math.exp(log_t), extrapolated=extra, exact=exact)


def _describe(keys: dict) -> str:
    return ", ".join(f"{k}={brief(v)}" for k, v in keys.items())


def _locate(table: CostTable, keys: dict) -> tuple[_Grid, tuple[float, ...]]:
    schema = OPS[table.op]
    unknown = sorted(set(keys) - set(schema.exact) - set(schema.sizes))
    if unknown:
        raise CostError(f"{table.where}: {table.op} has no key {unknown[0]!r} (exact keys: "
                        f"{', '.join(schema.exact)}; size keys: {', '.join(schema.sizes)})")
    query = []
    for key in schema.sizes:
        if key not in keys:
            raise CostError(f"{table.where}: a {table.op} query needs {key!r} (size keys: "
                            f"{', '.join(schema.sizes)})")
        value = keys[key]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                             np.floating)) \
                or not math.isfinite(float(value)) or float(value) <= 0:
            raise CostError(f"{table.where}: {key!r} must be a finite number > 0, got "
                            f"{brief(value)}")
        query.append(float(value))
    groups = _groups(table)
    frame = table.frame
    mask = np.ones(len(frame), dtype=bool)
    chosen = []
    for key in schema.exact:
        column = frame[key]
        if key in keys:
            want = keys[key]
            if key in schema.text:
                want = str(want)
            elif isinstance(want, bool) or not isinstance(
                    want, (int, float, np.integer, np.floating)) or \
                    not float(want).is_integer():
                raise CostError(f"{table.where}: {key!r} must be an integer, got "
                                f"{brief(want)}")
            else:
                want = int(want)
            hit = mask & (column == want).to_numpy()
            if not hit.any():
                offered = sorted(column[mask].unique().tolist())
                raise CostError(f"{table.where}: no {table.op} measurement with {key}="
                                f"{brief(want)} (given the other keys: {brief(offered)})")
            mask = hit
            chosen.append(want)
        else:
            offered = column[mask].unique().tolist()
            if len(offered) > 1:
                raise CostError(f"{table.where}: the table holds several {key!r} values; "
                                f"pass one of {brief(sorted(offered))}")
            chosen.append(offered[0])
    return groups[tuple(_plain(v) for v in chosen)], tuple(query)


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, (int, np.integer)) else str(value)


def _groups(table: CostTable, monotone: bool = True) -> dict[tuple, _Grid]:
    """One grid per exact-key group, built once per table (kept on the table)."""
    cache = getattr(table, "_grids", None)
    if cache is None:
        cache = {}
        object.__setattr__(table, "_grids", cache)
    if monotone in cache:
        return cache[monotone]
    schema = OPS[table.op]
    frame = table.frame
    grids: dict[tuple, _Grid] = {}
    log_lat = np.log(frame["latency_s"].to_numpy(dtype=np.float64))
    sizes = frame[list(schema.sizes)].to_numpy(dtype=np.float64)
    for key, index in frame.groupby(list(schema.exact), sort=False).indices.items():
        key = key if isinstance(key, tuple) else (key,)
        grids[tuple(_plain(v) for v in key)] = _Grid.build(
            sizes[index], log_lat[index], schema.sizes, monotone=monotone)
    cache[monotone] = grids
    return grids


def leave_one_out(table: CostTable) -> tuple[np.ndarray, np.ndarray, int]:
    """Predict every measured point (each distinct key, repeats combined) from all the
    others, interpolation only. Returns (measured, predicted) latencies in seconds for
    the points that could be predicted, and how many could not (a point at the corner
    of its grid has no neighbours on one side). The point is removed from the raw
    measurements before rule 5 (the monotone envelope) is applied to the rest, and
    "measured" is its raw value (median of repeats), not its envelope."""
    measured, predicted, refused = [], [], 0
    for _, _, raw, got in _loo(table, True):
        if got is None:
            refused += 1
            continue
        measured.append(raw)
        predicted.append(got)
    return np.asarray(measured), np.asarray(predicted), refused


def leave_one_out_points(table: CostTable, *, monotone: bool = True) -> pd.DataFrame:
    """:func:`leave_one_out`, one row per distinct measured point: the exact keys, the
    size keys, ``measured_s`` (raw median of repeats) and ``predicted_s`` (NaN for an
    edge point that cannot be predicted without extrapolating). ``monotone=False``
    leaves out rule 5, to show what it changes."""
    schema = OPS[table.op]
    rows = [key + point + (raw, math.nan if got is None else got)
            for key, point, raw, got in _loo(table, monotone)]
    return pd.DataFrame(rows, columns=list(schema.exact) + list(schema.sizes)
                        + ["measured_s", "predicted_s"])


def _loo(table: CostTable, monotone: bool):
    for key, grid in _groups(table, monotone).items():
        for point, log_t in _leaves(grid, ()):
            try:
                got, _, _ = grid.answer(point, 0, False, point)
            except _Miss:
                yield key, point, math.exp(log_t), None
                continue
            yield key, point, math.exp(log_t), math.exp(got)


def _leaves(grid: _Grid, prefix: tuple[float, ...]):
    """(size point, raw log latency) of every measured point, before rule 5."""
    if grid.raw:
        for value, log_t in zip(grid.values, grid.raw, strict=True):
            yield prefix + (value,), log_t
        return
    for value, child in zip(grid.values, grid.children, strict=True):
        yield from _leaves(child, prefix + (value,))
