"""Sweep speed-up with local worker processes. Run on demand:

    python benchmarks/bench_sweep.py              # 16 points, --jobs 1 against --jobs 2
    python benchmarks/bench_sweep.py --rounds 2 --jobs 1,2,4

Each run is the whole command (``macssim sweep``, process start and imports included) in a
fresh subprocess writing a fresh table; runs alternate between the job counts, round by
round, so a machine that gets busier or quieter during the benchmark weighs on each the
same. Prints the wall time of every run, the ratio per round and whether every run wrote
the same table (it must).

A control beside each round: the same pure-Python CPU burner (2 s of CPU) run once
alone and twice at once. Its ratio is the parallelism the machine offers at that moment
(2.0 on two idle cores; 1.0 when another process holds one of them), the ceiling of any
2-job speed-up measured then."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# 16 points: 2 topologies x 4 capacity factors x 2 precisions, 2 policies each, on the first
# --steps steps of the bundled trace.
SWEEP = ["--topology", "8xH100,16xH100", "--capacity-factor", "0.75,1,1.25,1.5",
         "--precision", "bf16,fp8-experts", "--policy", "macs,token-drop"]


def _children_cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 2: pass\n"


def control() -> float:
    """Wall time of one burner over that of two at once (two cores free: ~2.0)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", BURN], check=True)
    one = time.perf_counter() - t
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(2)]
    for p in procs:
        p.wait()
    return 2 * one / (time.perf_counter() - t)


def run(jobs: int, out: Path, steps: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the command and its workers) of one sweep."""
    cpu = _children_cpu_s()
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from macssim.cli import main; main()", "sweep",
                    *SWEEP, "--steps", str(steps), "--jobs", str(jobs), "--out", str(out)],
                   check=True, capture_output=True, text=True)
    return time.perf_counter() - t, _children_cpu_s() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--jobs", default="1,2", help="job counts to compare, the first as base")
    ap.add_argument("--steps", type=int, default=2, help="trace steps replayed per point")
    args = ap.parse_args()
    counts = [int(j) for j in args.jobs.split(",")]
    walls: dict[int, list[float]] = {j: [] for j in counts}
    cpus: dict[int, list[float]] = {j: [] for j in counts}
    tables = set()
    with tempfile.TemporaryDirectory() as tmp:
        controls = []
        for r in range(args.rounds):
            controls.append(control())
            print(f"round {r}: control: two burners at once ran {controls[-1]:.2f}x as fast "
                  "as one after the other", flush=True)
            for j in (counts if r % 2 == 0 else counts[::-1]):
                out = Path(tmp) / f"r{r}-j{j}.parquet"
                load_before = os.getloadavg()[0]
                wall, cpu = run(j, out, args.steps)
                walls[j].append(wall)
                cpus[j].append(cpu)
                tables.add(out.read_bytes())
                print(f"round {r}: --jobs {j}: {wall:.1f} s wall, {cpu:.1f} s CPU (load "
                      f"average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} on "
                      f"{os.cpu_count()} CPUs)", flush=True)
    base = counts[0]
    result = {"points": 16, "steps": args.steps, "cpus": os.cpu_count(), "wall_s": walls,
              "cpu_s": cpus,
              f"speedup_vs_jobs_{base}": {
                  j: [b / w for b, w in zip(walls[base], walls[j], strict=True)]
                  for j in counts[1:]},
              "control_parallelism": controls,
              "identical_tables": len(tables) == 1}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
