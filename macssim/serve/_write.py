"""Write a serving run's report directory with the replay report's safety rules: built
in a temporary directory beside the target and renamed into place when complete; a
target holding anything macssim did not write is refused; an earlier report is replaced
only with ``force`` (else the new one goes beside it, ``DIR-2``). The rules live in
``macssim.report``'s ``ReportWriter``; this subclass only says which files a serving run
writes."""

from __future__ import annotations

import json
import os

import pandas as pd

from macssim.report import MANIFEST, Report, ReportWriter
from macssim.report._write import run_header
from macssim.serve._run import ServeResult

__all__ = ["ServeReportWriter", "write_serve_report"]

FILES = ("requests.csv", "steps.csv", "summary.csv", "run.json")


class ServeReportWriter(ReportWriter):
    """``ReportWriter`` for a serving run: ``requests.csv``, ``steps.csv``, ``summary.csv``
    (one row) and ``run.json``."""

    def finish(self, result: ServeResult, command_line: list[str]) -> Report:  # type: ignore[override]
        tmp = self._tmp
        summary = pd.DataFrame([result.summary])
        result.requests.to_csv(tmp / "requests.csv", index=False)
        result.steps.to_csv(tmp / "steps.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        run = {
            **run_header(result, command_line),
            "replay": result.replay,
            "versions": result.versions,
            "wall_s": result.wall_s,
        }
        (tmp / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
        files = tuple(sorted(p.name for p in tmp.iterdir()))
        (tmp / MANIFEST).write_text(json.dumps({"macssim_report": 1, "files": list(files)},
                                               indent=2) + "\n")
        self._report = Report(directory=self.out_dir, files=files, summary=summary)
        return self._report


def write_serve_report(result: ServeResult, out_dir: str | os.PathLike,
                       command_line: list[str], *, force: bool = False) -> Report:
    """The serving run's report, atomically (module docstring)."""
    with ServeReportWriter(out_dir, force=force) as writer:
        return writer.finish(result, command_line)
