"""The results table: one Parquet file, rewritten whole and atomically as points finish.

Every write goes to a temporary file beside the table (``.NAME.macssim-tmp-PID``),
flushed to disk, then renamed over it: a reader, or a sweep killed at any instant, sees
the previous complete table or the new one, never a torn one. The file carries its
writer in the Parquet schema metadata (``macssim.sweep``: format and macssim version), so
a later run can tell its own table from anyone else's file, and from another version's.

Rows are kept in one canonical order (the sweep's point order, then the policies' order,
then the summary's kinds) with columns in one canonical order, and the table holds no
wall-clock figure, so the same sweep writes the same table however its points were
scheduled, and a resumed sweep the same table as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from macssim import __version__
from macssim._process import process_alive
from macssim.sweep._axes import AXES, SweepError

__all__ = ["FIXED_COLUMNS", "TABLE_FORMAT", "ResultsTable", "read_results"]

TABLE_FORMAT = 1
_META_KEY = b"macssim.sweep"
_TMP_MARK = ".macssim-tmp-"

FIXED_COLUMNS: tuple[str, ...] = (
    "point_id", "point_index", "status", "error",
    *(a.name for a in AXES),
    "policies", "steps_requested", "seed", "network_rtol", "model_preset", "scenario_steps",
    "model", "num_gpus", "nodes", "gpu", "alltoall_engine", "trace_sha256", "macssim_version",
    "policy", "kind", "steps",
)
"""The identity, axes and settings of the point, what it ran on, then the summary row's
keys; the summary's figures follow (``SUMMARY_COLUMNS`` order, then the rest sorted)."""


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - a dependency; said plainly if missing
        raise SweepError("sweep results are Parquet and need pyarrow: pip install pyarrow") \
            from e
    return pa, pq


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    from macssim.report import SUMMARY_COLUMNS

    present: set[str] = set()
    for r in rows:
        present.update(r)
    head = [c for c in FIXED_COLUMNS if c in present]
    summary = [c for c in SUMMARY_COLUMNS if c in present]
    rest = sorted(present - set(head) - set(summary))
    return head + summary + rest


def read_results(path: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows and metadata of a macssim sweep table; SweepError when the file is not
    one (not Parquet, half written, someone else's) or was written by another version."""
    _, pq = _pyarrow()
    where = str(path)
    p = Path(path)
    if not p.exists():
        raise SweepError(f"{where}: no such results table")
    if p.is_dir():
        raise SweepError(f"{where}: is a directory, not a sweep results table")
    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for a torn or foreign file
        raise SweepError(f"{where}: not a readable Parquet table (half written, or not a "
                         f"macssim sweep table): {' '.join(str(e).split())[:200]}") from None
    meta_raw = (table.schema.metadata or {}).get(_META_KEY)
    if meta_raw is None:
        raise SweepError(f"{where}: a Parquet table, but not one macssim sweep wrote (no "
                         f"{_META_KEY.decode()} metadata)")
    try:
        meta = json.loads(meta_raw)
        version, fmt = meta["macssim_version"], meta["format"]
    except (ValueError, KeyError, TypeError):
        raise SweepError(f"{where}: its {_META_KEY.decode()} metadata is damaged") from None
    if fmt != TABLE_FORMAT or version != __version__:
        raise SweepError(f"{where}: written by macssim {version} (table format {fmt}); this is "
                         f"macssim {__version__} (format {TABLE_FORMAT}). A point's identity "
                         "includes the version, so its results are not comparable: run the "
                         "sweep again into a new --out")
    return table.to_pylist(), meta


class ResultsTable:
    """The rows of one sweep's table and their atomic rewrite.

    ``ResultsTable.open(path, resume=..., force=...)`` decides what may happen to an
    existing file: a missing file is created; a macssim sweep table of this version is
    continued (``resume``) or replaced (``force``); anything else is refused untouched."""

    def __init__(self, path: Path, rows: list[dict[str, Any]]) -> None:
        self.path = path
        self._rows = rows

    @classmethod
    def open(cls, path: str | os.PathLike, *, resume: bool, force: bool) -> ResultsTable:
        p = Path(os.path.abspath(path))
        if not p.exists() and not p.is_symlink():
            if not p.parent.is_dir():
                raise SweepError(f"{path}: its folder {p.parent} does not exist")
            return cls(p, [])
        if p.is_symlink() or not p.is_file():
            raise SweepError(f"{path}: exists and is not a regular file; give --out a new "
                             "file name")
        try:
            rows, _ = read_results(p)
        except SweepError as e:
            raise SweepError(f"{e}. macssim never overwrites a file it cannot recognise as "
                             "its own: give --out a new file name") from None
        if resume:
            return cls(p, rows)
        if force:
            return cls(p, [])
        raise SweepError(f"{path}: already holds a sweep table ({len(rows)} rows); --resume "
                         "finishes it, --force replaces it")

    def done_ids(self) -> set[str]:
        """Points finished without error (a failed point is run again on resume)."""
        return {r["point_id"] for r in self._rows if r.get("status") == "ok"}

    def replace_point(self, point_id: str, rows: list[dict[str, Any]]) -> None:
        self._rows = [r for r in self._rows if r["point_id"] != point_id] + rows

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows)

    def write(self, order: dict[str, int]) -> None:
        """Rewrite the table atomically; ``order``: point id -> its index in this sweep
        (rows of points not in it — an earlier, wider sweep — go last, by id)."""
        pa, pq = _pyarrow()
        rows = sorted(self._rows, key=lambda r: (
            order.get(r["point_id"], len(order)), r["point_id"]))
        cols = _columns(rows)
        table = pa.table({c: pa.array([r.get(c) for r in rows]) for c in cols})
        meta = {"format": TABLE_FORMAT, "macssim_version": __version__}
        table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        _remove_stale_temporaries(self.path)
        tmp = self.path.with_name(f".{self.path.name}{_TMP_MARK}{os.getpid()}")
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise SweepError(f"{self.path}: cannot write the results table "
                             f"({e.strerror or e})") from e
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary tables of sweeps that were killed (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}{_TMP_MARK}*"):
        pid = tmp.name.rsplit(_TMP_MARK, 1)[1]
        if pid.isdigit() and not process_alive(int(pid)) and tmp.is_file():
            tmp.unlink(missing_ok=True)
