"""Write a replay's report directory atomically: everything goes into a hidden temporary
directory beside the target, which replaces the target only once complete, so a failed
or interrupted run leaves no partial report."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from macssim.replay import ReplayResult
from macssim.report._plots import plot_latency_cdf, plot_load_heatmap, plot_straggler_per_layer
from macssim.report._summary import summarize

__all__ = ["Report", "write_report"]


@dataclass(frozen=True)
class Report:
    directory: Path
    files: tuple[str, ...]
    summary: object
    """The per-policy summary DataFrame (``summary.csv``)."""


def write_report(result: ReplayResult, out_dir: Path, command_line: list[str]) -> Report:
    """CSVs (phases, layers, steps, drops, summary), PNG plots, the first step's Perfetto
    timeline per policy (``timeline-<policy>.json``, open in ui.perfetto.dev), and
    ``run.json`` (command line, config, versions, seed, trace checksum)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        summary = summarize(result.layers, result.steps, result.drops, result.policies)
        summary.to_csv(tmp / "summary.csv", index=False)
        result.layers.to_csv(tmp / "layers.csv", index=False)
        result.steps.to_csv(tmp / "steps.csv", index=False)
        result.phases.to_csv(tmp / "phases.csv", index=False)
        result.drops.to_csv(tmp / "drops.csv", index=False)
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
            "versions": result.versions,
        }
        (tmp / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        files = tuple(sorted(p.name for p in tmp.iterdir()))
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Report(directory=out_dir, files=files, summary=summary)
