"""Write a replay's report directory atomically, and never at the cost of a user's files.

Everything goes into a hidden temporary directory beside the target, which takes the
target's name only once complete, so a failed or interrupted run leaves no partial
report. The target itself is treated as someone else's until proven ours:

- a missing or empty directory becomes the report;
- a directory holding an earlier macssim report (its manifest, ``.macssim-report.json``,
  lists exactly the files it holds) is replaced only with ``force``; otherwise the new
  report goes beside it (``NAME-2``, ``NAME-3``, …);
- anything else — a file, a folder of notes, a report someone added files to — is
  refused with a message; nothing in it is touched.

A run killed mid-way leaves its temporary directory (``.NAME.macssim-tmp-PID``); the next
run beside it removes those whose process is gone.

The per-phase table grows with every step (GPUs × layers × phases × policies rows), so
``ReportWriter.append_phases`` streams it to ``phases.parquet`` as the replay runs, one
row group per policy × step, instead of holding it in memory: columnar and zstd-compressed,
with policy and phase names dictionary-encoded, it is a small fraction of the CSV it
replaces (docs/cluster.md has the figures) and reads with ``pandas.read_parquet``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from macssim._errors import ReportError
from macssim._process import process_alive
from macssim.replay import ReplayResult
from macssim.report._plots import plot_latency_cdf, plot_load_heatmap, plot_straggler_per_layer
from macssim.report._summary import summarize

__all__ = ["MANIFEST", "PHASES_SCHEMA", "Report", "ReportError", "ReportWriter", "write_report"]

PHASES_SCHEMA = pa.schema([
    ("policy", pa.dictionary(pa.int8(), pa.string())),
    ("step", pa.int32()), ("layer", pa.int16()), ("gpu", pa.int32()),
    ("phase", pa.dictionary(pa.int8(), pa.string())),
    ("start_s", pa.float64()), ("end_s", pa.float64()), ("duration_s", pa.float64())])
"""``phases.parquet``: one row per GPU, layer and phase of every step and policy."""


MANIFEST = ".macssim-report.json"
"""Written last into every report: the files macssim put there, so a later run can tell
its own report from a user's folder."""
_TMP_MARK = ".macssim-tmp-"



@dataclass(frozen=True)
class Report:
    directory: Path
    files: tuple[str, ...]
    summary: pd.DataFrame
    """The per-policy summary (``summary.csv``)."""


class ReportWriter:
    """``with ReportWriter(out_dir) as w: replay(..., on_phases=w.append_phases);
    report = w.finish(result, argv)`` — the directory appears only if the block succeeds."""

    def __init__(self, out_dir: str | os.PathLike, *, force: bool = False) -> None:
        self.requested = Path(out_dir)
        self.out_dir = _choose_target(Path(os.path.abspath(out_dir)), force=force)
        """Where the report will be: ``out_dir``, or beside it when that holds an earlier
        report and ``force`` is false."""
        self._tmp_dir: Path | None = None
        self._phases = None
        """pyarrow ParquetWriter of ``phases.parquet``, open while phases stream in."""
        self._report: Report | None = None

    @property
    def _tmp(self) -> Path:
        """The temporary directory, made on the first write: a run that fails before
        writing anything (a bad topology, say) leaves no trace on disk."""
        if self._tmp_dir is None:
            try:
                self.out_dir.parent.mkdir(parents=True, exist_ok=True)
                _remove_stale_temporaries(self.out_dir.parent)
                self._tmp_dir = Path(tempfile.mkdtemp(
                    prefix=f".{self.out_dir.name}{_TMP_MARK}{os.getpid()}-",
                    dir=self.out_dir.parent))
            except OSError as e:
                raise ReportError(f"{self.requested}: cannot create the report directory "
                                  f"({e.strerror or e})") from e
        return self._tmp_dir

    def append_phases(self, phases: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(phases, schema=PHASES_SCHEMA, preserve_index=False)
        if self._phases is None:
            self._phases = pq.ParquetWriter(self._tmp / "phases.parquet", PHASES_SCHEMA,
                                            compression="zstd")
        self._phases.write_table(table)

    def _close_phases(self) -> None:
        if self._phases is not None:
            self._phases.close()
            self._phases = None

    def finish(self, result: ReplayResult, command_line: list[str]) -> Report:
        """CSVs (summary, layers, steps, drops; phases unless streamed), PNG plots, the
        first step's Perfetto timeline per policy (``timeline-<policy>.json``, open in
        ui.perfetto.dev), and ``run.json`` (command line, config, versions, seed, trace
        checksum, which cost backend answered and its coverage)."""
        tmp = self._tmp
        summary = summarize(result.layers, result.steps, result.drops, result.policies)
        summary.to_csv(tmp / "summary.csv", index=False)
        result.layers.to_csv(tmp / "layers.csv", index=False)
        result.steps.to_csv(tmp / "steps.csv", index=False)
        result.drops.to_csv(tmp / "drops.csv", index=False)
        if result.phases is not None:
            self.append_phases(result.phases)
        plot_load_heatmap(result.gpu_load, tmp / "load_heatmap.png")
        plot_straggler_per_layer(result.layers, result.policies, tmp / "straggler_per_layer.png")
        plot_latency_cdf(result.layers, result.policies, tmp / "latency_cdf.png")
        self._close_phases()
        for name, doc in result.timelines.items():
            (tmp / f"timeline-{name}.json").write_text(json.dumps(doc))
        run = {
            **run_header(result, command_line),
            "policies_replayed": list(result.policies),
            "policy_params": result.policy_params,
            "versions": result.versions,
            "costs": result.costs,
            "score_gaps": result.score_gaps,
        }
        (tmp / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        return self.seal(summary)

    @property
    def staging(self) -> Path:
        """The temporary directory to write the report's files into."""
        return self._tmp

    def seal(self, summary: pd.DataFrame) -> Report:
        """Write the manifest of what ``staging`` holds: the report is complete, and the
        ``with`` block's end moves it into place."""
        tmp = self._tmp
        files = tuple(sorted(p.name for p in tmp.iterdir()))
        manifest = {"macssim_report": 1, "files": list(files)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        self._report = Report(directory=self.out_dir, files=files, summary=summary)
        return self._report

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close_phases()
        if exc_type is not None or self._report is None:
            if self._tmp_dir is not None:
                shutil.rmtree(self._tmp_dir, ignore_errors=True)
            return
        os.chmod(self._tmp, 0o755)
        _move_into_place(self._tmp, self.out_dir)


def write_report(result: ReplayResult, out_dir: Path, command_line: list[str], *,
                 force: bool = False) -> Report:
    """The whole report of an in-memory result, atomically."""
    with ReportWriter(out_dir, force=force) as writer:
        return writer.finish(result, command_line)


def _foreign_files(directory: Path) -> list[str]:
    """Names in ``directory`` that no macssim report manifest there accounts for (all of
    them when there is no readable manifest)."""
    present = sorted(p.name for p in directory.iterdir())
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        if manifest.get("macssim_report") != 1:
            return present
        listed = set(manifest["files"]) | {MANIFEST}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return present
    return [name for name in present if name not in listed]


def _earlier_report(directory: Path) -> bool:
    return not _foreign_files(directory)


def _choose_target(out_dir: Path, *, force: bool) -> Path:
    if not out_dir.exists() and not out_dir.is_symlink():
        return out_dir
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise ReportError(f"{out_dir}: exists and is not a directory; give --out a new or "
                          "empty directory")
    try:
        entries = sorted(p.name for p in out_dir.iterdir())
    except OSError as e:
        raise ReportError(f"{out_dir}: cannot read the directory ({e.strerror or e})") from e
    if not entries:
        return out_dir
    foreign = _foreign_files(out_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        raise ReportError(f"{out_dir}: holds files that are not a macssim report ({shown}); "
                          "macssim never deletes what it did not write — give --out a new "
                          "or empty directory")
    if force:
        return out_dir
    for n in range(2, 10_000):
        beside = out_dir.with_name(f"{out_dir.name}-{n}")
        if not beside.exists() and not beside.is_symlink():
            return beside
    raise ReportError(f"{out_dir}: too many earlier reports beside it; use --force")


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished report onto ``target``; an earlier report there (checked again
    now, in case it changed while the replay ran) is renamed away first and removed only
    once the new one is in place."""
    if target.is_dir() and not target.is_symlink() and any(target.iterdir()):
        if not _earlier_report(target):
            raise ReportError(f"{target}: files appeared there during the run; the report "
                              f"is left in {tmp}")
        old = target.with_name(f".{target.name}{_TMP_MARK}{os.getpid()}-old")
        target.rename(old)
        tmp.rename(target)
        for name in json.loads((old / MANIFEST).read_text())["files"] + [MANIFEST]:
            (old / name).unlink(missing_ok=True)
        old.rmdir()
        return
    if target.is_dir():  # empty, perhaps the current directory: move the files in
        for path in tmp.iterdir():
            path.rename(target / path.name)
        tmp.rmdir()
        return
    tmp.rename(target)


def _remove_stale_temporaries(parent: Path) -> None:
    """Temporary report directories of runs that were killed (their process is gone)."""
    for path in parent.glob(f".*{_TMP_MARK}*"):
        pid_text = path.name.split(_TMP_MARK, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and not process_alive(int(pid_text)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def run_header(result, command_line: list[str]) -> dict:
    """What every ``run.json`` opens with, for a replay or a serving run alike: how it was
    called, its config and seed, and what it ran on."""
    return {"command_line": command_line, "config": result.config.to_dict(),
            "seed": result.config.seed, "trace_sha256": result.trace_sha256,
            "model": result.model.name, "topology": result.topology.name}
