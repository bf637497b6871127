"""macssim's own table of measured per-operation costs: one long table per operation.

Why a format of our own rather than reading vendors' files directly: a vendor's layout
changes between releases (aiconfigurator-core renamed columns and moved directories
between minors), units differ per file (ms for GEMM and MoE, µs for DeepEP, element
counts for NCCL), and a user's own measurements must fit the same reader. One schema,
in seconds and bytes, validated on load, is what the interpolator is written against;
converters (``_aiconfigurator.py``) are the only code that knows a vendor's layout.

A table is a CSV file (or a pandas DataFrame) with the columns of one operation, see
:data:`OPS` and docs/cost-tables.md. Every row is one measurement; rows that repeat the
same keys are repeated measurements and are combined by their median.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from macssim._errors import CostError
from macssim._validate import Limits, brief, check_choice, check_int, check_number

__all__ = ["OPS", "OpSchema", "CostTable", "load_table", "table_from_frame", "save_table"]

MAX_TABLE_BYTES = Limits.MAX_TABLE_BYTES
MAX_SIZE_KEY = float(Limits.MAX_SIZE_KEY)


@dataclass(frozen=True)
class OpSchema:
    """The columns of one operation's table.

    ``text``: exact-match labels (strings). ``ints``: exact-match integers (a different
    value is a different configuration, never interpolated). ``sizes``: the size keys
    the latency is interpolated in, log-log, in this order."""

    name: str
    text: tuple[str, ...]
    ints: tuple[tuple[str, int], ...]  # (column, smallest allowed value)
    sizes: tuple[str, ...]
    doc: str

    @property
    def exact(self) -> tuple[str, ...]:
        return self.text + tuple(c for c, _ in self.ints)

    @property
    def columns(self) -> tuple[str, ...]:
        return ("op",) + self.exact + self.sizes + ("latency_s",)


_COMMON = ("system", "framework", "version", "kernel", "dtype")

OPS: dict[str, OpSchema] = {
    "gemm": OpSchema(
        "gemm", _COMMON, (), ("m", "n", "k"),
        "One dense GEMM: (m × k) · (k × n); m is the token count."),
    "moe": OpSchema(
        "moe", _COMMON + ("distribution",),
        (("hidden", 1), ("inter", 1), ("experts", 1), ("topk", 1), ("tp", 1), ("ep", 1)),
        ("tokens",),
        "One fused MoE layer on one rank: routing, permute, expert GEMMs, finalize. "
        "tokens = tokens entering the layer; inter = expert intermediate size (before any "
        "TP split); distribution = how tokens spread over experts (balanced, "
        "power_law_<alpha>)."),
    "nccl": OpSchema(
        "nccl", _COMMON + ("collective",), (("ranks", 1),), ("bytes_per_rank",),
        "One NCCL collective (alltoall, all_gather, all_reduce, reduce_scatter) as "
        "nccl-tests times it; bytes_per_rank = the per-rank buffer nccl-tests calls "
        "'size' (for alltoall: each rank sends bytes_per_rank / ranks to every rank)."),
    "deepep": OpSchema(
        "deepep", _COMMON + ("mode", "phase"),
        (("hidden", 1), ("topk", 1), ("experts", 1), ("ep", 1), ("sms", 0)),
        ("tokens",),
        "One DeepEP dispatch or combine. mode: normal | low_latency; phase: dispatch | "
        "combine; tokens = tokens per rank; sms = SMs given to the kernel (0 = not set / "
        "not applicable, as for low-latency kernels)."),
}

OPTIONAL_COLUMNS = ("source",)
"""Free text, carried and ignored (where a row came from)."""

_INT_TEXT = re.compile(r"^\s*\+?\d+\s*$")


@dataclass
class CostTable:
    """A validated table of one operation's measured latencies.

    ``frame`` has exactly the schema's columns (plus ``source`` if given); text columns
    are str, integer keys int64, size keys and ``latency_s`` float64. ``where`` names the
    file (or what the frame came from) in messages."""

    op: str
    frame: pd.DataFrame
    where: str

    @property
    def schema(self) -> OpSchema:
        return OPS[self.op]

    def __len__(self) -> int:
        return len(self.frame)

    def values(self, column: str) -> list:
        """The distinct values of one column, sorted (what a query may ask for)."""
        return sorted(self.frame[column].unique().tolist())

    def select(self, **keys: Any) -> CostTable:
        """The rows whose exact keys equal ``keys`` (a smaller table, still valid)."""
        mask = np.ones(len(self.frame), dtype=bool)
        for key, want in keys.items():
            if key not in self.schema.exact:
                raise CostError(f"{self.where}: {self.op} has no exact key {key!r} (exact "
                                f"keys: {', '.join(self.schema.exact)})")
            mask &= (self.frame[key] == want).to_numpy()
        if not mask.any():
            raise CostError(f"{self.where}: no {self.op} rows with "
                            f"{', '.join(f'{k}={v!r}' for k, v in keys.items())}")
        label = ",".join(f"{k}={v}" for k, v in keys.items())
        return CostTable(self.op, self.frame[mask].reset_index(drop=True),
                         f"{self.where}[{label}]")

    def predict(self, *, extrapolate: bool = False, **keys: Any) -> float:
        """Latency in seconds at ``keys``; see :func:`macssim.cost.predict`."""
        from macssim.cost._interpolate import predict

        return predict(self, extrapolate=extrapolate, **keys)


def load_table(path: str | os.PathLike) -> CostTable:
    """Read and validate one cost table (CSV; ``.parquet`` where pyarrow is installed).

    Every problem is refused with a :class:`CostError` naming the file, the row (the CSV
    line number, header = line 1) and the column."""
    where = str(path)
    try:
        size = os.stat(path).st_size
    except (OSError, ValueError) as e:
        raise CostError(f"{where}: cannot read cost table "
                        f"({getattr(e, 'strerror', None) or e})") from e
    if size > MAX_TABLE_BYTES:
        raise CostError(f"{where}: a cost table may be at most {MAX_TABLE_BYTES} bytes, "
                        f"this one is {size}")
    if Path(where).suffix.lower() == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except ImportError as e:
            raise CostError(f"{where}: reading Parquet needs pyarrow "
                            "(pip install pyarrow), or save the table as CSV") from e
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds
            raise CostError(f"{where}: not a readable Parquet file ({brief(str(e))})") from e
        return table_from_frame(frame.astype(str), where=where, first_row=1)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                            skipinitialspace=True, encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CostError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise CostError(f"{where}: not a readable CSV table ({brief(str(e))})") from e
    return table_from_frame(frame, where=where, first_row=2)


def table_from_frame(frame: pd.DataFrame, *, where: str = "<frame>",
                     first_row: int = 0) -> CostTable:
    """Validate a DataFrame as a cost table (values may be strings, as read from CSV, or
    already numbers). ``first_row`` is what the first row is called in messages (2 for a
    CSV file: the header is line 1)."""
    frame = frame.reset_index(drop=True)
    columns = [str(c).strip() for c in frame.columns]
    frame.columns = columns
    if "op" not in columns:
        raise CostError(f'{where}: missing column "op" (one of {sorted(OPS)})')
    if len(frame) == 0:
        raise CostError(f"{where}: the table has no rows")
    ops = frame["op"].astype(str).str.strip()
    op = ops.iloc[0]
    check_choice(op, f"{where}: row {first_row}", "op", tuple(sorted(OPS)), error=CostError)
    other = np.flatnonzero((ops != op).to_numpy())
    if other.size:
        r = int(other[0])
        raise CostError(f'{where}: row {first_row + r}: "op" must be {op!r} like the first '
                        f"row (one operation per table), got {brief(ops.iloc[r])}")
    schema = OPS[op]
    missing = [c for c in schema.columns if c not in columns]
    if missing:
        raise CostError(f"{where}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(c) for c in missing)} (a {op!r} table needs "
                        f"{', '.join(schema.columns)})")
    unknown = [c for c in columns if c not in schema.columns and c not in OPTIONAL_COLUMNS]
    if unknown:
        raise CostError(f"{where}: unknown column{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(c) for c in unknown)} (a {op!r} table has "
                        f"{', '.join(schema.columns)}, and optionally "
                        f"{', '.join(OPTIONAL_COLUMNS)})")
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})
        raise CostError(f"{where}: column {dup[0]!r} appears more than once")

    out: dict[str, Any] = {"op": np.full(len(frame), op, dtype=object)}
    for col in schema.text + tuple(c for c in OPTIONAL_COLUMNS if c in columns):
        values = frame[col]
        text = values.astype(str).str.strip()
        bad = (text == "") | values.isna() | (text.str.len() > 200)
        if col in OPTIONAL_COLUMNS:
            bad = text.str.len() > 200
        _refuse_first(bad, values, where, first_row, col, "a non-empty string of at most "
                      "200 characters")
        out[col] = text.to_numpy(dtype=object)
    for col, low in schema.ints:
        out[col] = _ints(frame[col], where, first_row, col, low)
    for col in schema.sizes:
        out[col] = _numbers(frame[col], where, first_row, col, low=0.0, low_open=True,
                            high=MAX_SIZE_KEY)
    out["latency_s"] = _numbers(frame["latency_s"], where, first_row, "latency_s",
                                low=0.0, low_open=True, high=1e6)
    clean = pd.DataFrame(out, columns=list(schema.columns) +
                         [c for c in OPTIONAL_COLUMNS if c in columns])
    return CostTable(op=op, frame=clean, where=where)


def save_table(table: CostTable, path: str | os.PathLike) -> None:
    """Write a table as CSV in macssim's format (``float`` written exactly: repr), under a
    temporary name first, so a failed write leaves nothing under ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        table.frame.to_csv(tmp, index=False, float_format="%.17g")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CostError(f"{path}: cannot write the table ({e.strerror or e})") from e


def _refuse_first(bad: pd.Series, values: pd.Series, where: str, first_row: int, col: str,
                  expected: str) -> None:
    idx = np.flatnonzero(np.asarray(bad, dtype=bool))
    if idx.size:
        r = int(idx[0])
        raise CostError(f'{where}: row {first_row + r}: "{col}" must be {expected}, '
                        f"got {brief(values.iloc[r])}")


def _ints(values: pd.Series, where: str, first_row: int, col: str, low: int) -> np.ndarray:
    if pd.api.types.is_integer_dtype(values.dtype):
        parsed = values.astype("int64")
        ok = np.ones(len(values), dtype=bool)
    else:
        text = values.astype(str)
        ok = text.str.match(_INT_TEXT).to_numpy(dtype=bool) & \
            (text.str.strip().str.len() < 16).to_numpy(dtype=bool)
        parsed = pd.to_numeric(text.where(ok, "0"), errors="coerce").fillna(0).astype("int64")
    ok &= (parsed >= low).to_numpy(dtype=bool) & (parsed <= (1 << 40)).to_numpy(dtype=bool)
    idx = np.flatnonzero(~ok)
    if idx.size:
        r = int(idx[0])
        raw = values.iloc[r]
        value = int(parsed.iloc[r]) if (isinstance(raw, str) and _INT_TEXT.match(raw)) else raw
        check_int(value, f"{where}: row {first_row + r}", col, low=low, high=1 << 40,
                  error=CostError)
        raise CostError(f'{where}: row {first_row + r}: "{col}" must be an integer >= {low}, '
                        f"got {brief(raw)}")  # pragma: no cover - check_int raised
    return parsed.to_numpy(dtype=np.int64)


def _numbers(values: pd.Series, where: str, first_row: int, col: str, *, low: float,
             low_open: bool, high: float) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values.dtype):
        parsed = pd.Series(np.full(len(values), np.nan))
    else:
        parsed = pd.to_numeric(values, errors="coerce").astype("float64")
    arr = parsed.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(arr) & ((arr > low) if low_open else (arr >= low)) & (arr <= high)
    idx = np.flatnonzero(~ok)
    if idx.size:
        r = int(idx[0])
        raw = values.iloc[r]
        value = float(arr[r]) if np.isfinite(arr[r]) else raw
        if isinstance(value, str):
            value = raw  # text that is no number, or "nan"/"inf": shown as written
        check_number(value, f"{where}: row {first_row + r}", col, low=low, high=high,
                     low_open=low_open, error=CostError)
        raise CostError(f'{where}: row {first_row + r}: "{col}" must be a finite number, '
                        f"got {brief(raw)}")  # pragma: no cover - check_number raised
    return arr
