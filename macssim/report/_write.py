"""Write a replay's report directory atomically: everything goes into a hidden temporary
directory beside the target, which replaces the target only once complete, so a failed
or interrupted run leaves no partial report.

The per-phase table grows with every step (GPUs × layers × phases × policies rows), so
``ReportWriter.append_phases`` streams it to ``phases.csv`` as the replay runs instead of
holding it in memory."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from macssim.replay import ReplayResult
from macssim.report._plots import plot_latency_cdf, plot_load_heatmap, plot_straggler_per_layer
from macssim.report._summary import summarize

__all__ = ["Report", "ReportWriter", "write_report"]


@dataclass(frozen=True)
class Report:
    directory: Path
    files: tuple[str, ...]
    summary: pd.DataFrame
    """The per-policy summary (``summary.csv``)."""


class ReportWriter:
    """``with ReportWriter(out_dir) as w: replay(..., on_phases=w.append_phases);
    report = w.finish(result, argv)`` — the directory appears only if the block succeeds."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-",
                                          dir=self.out_dir.parent))
        self._phases_written = False
        self._report: Report | None = None

    def append_phases(self, phases: pd.DataFrame) -> None:
        phases.to_csv(self._tmp / "phases.csv", mode="a", index=False,
                      header=not self._phases_written)
        self._phases_written = True

    def finish(self, result: ReplayResult, command_line: list[str]) -> Report:
        """CSVs (summary, layers, steps, drops; phases unless streamed), PNG plots, the
        first step's Perfetto timeline per policy (``timeline-<policy>.json``, open in
        ui.perfetto.dev), and ``run.json`` (command line, config, versions, seed, trace
        checksum)."""
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
        for name, doc in result.timelines.items():
            (tmp / f"timeline-{name}.json").write_text(json.dumps(doc))
        run = {
            "command_line": command_line,
            "config": result.config.to_dict(),
            "seed": result.config.seed,
            "trace_sha256": result.trace_sha256,
            "model": result.model.name,
            "topology": result.topology.name,
            "policies_replayed": list(result.policies),
            "policy_params": result.policy_params,
            "versions": result.versions,
        }
        (tmp / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        files = tuple(sorted(p.name for p in tmp.iterdir()))
        self._report = Report(directory=self.out_dir, files=files, summary=summary)
        return self._report

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._report is None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        os.chmod(self._tmp, 0o755)
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        self._tmp.rename(self.out_dir)


def write_report(result: ReplayResult, out_dir: Path, command_line: list[str]) -> Report:
    """The whole report of an in-memory result, atomically."""
    with ReportWriter(out_dir) as writer:
        return writer.finish(result, command_line)
