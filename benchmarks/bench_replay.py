"""End-to-end replay speed and memory. Run on demand:

    python benchmarks/bench_replay.py            # default trace, 3 policies, 8xH100
    python benchmarks/bench_replay.py --memory   # peak RSS: 20 vs 80 steps of a chat trace

Each measurement runs in a fresh subprocess so peak RSS is the replay's own."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_RUN = r"""
import json, resource, sys, time
from pathlib import Path
from macssim.replay import ReplayConfig, replay
t = time.perf_counter()
r = replay(ReplayConfig(trace=Path(sys.argv[1]), policies=tuple(sys.argv[2].split(",")),
                        topology=sys.argv[3]))
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "steps": int(r.steps.step.nunique()),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(trace: Path, policies: str, topology: str) -> dict:
    out = subprocess.run([sys.executable, "-c", ONE_RUN, str(trace), policies, topology],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--topology", default="8xH100")
    args = ap.parse_args()
    from macssim._resources import DEFAULT_TRACE
    from macssim.trace import get_scenario, synthesize

    if not args.memory:
        policies = "macs,expanded-drop,token-drop"
        t = time.perf_counter()
        res = run(DEFAULT_TRACE, policies, args.topology)
        print(f"default trace, {policies}, {args.topology}: replay {res['wall_s']:.2f} s "
              f"({res['steps']} steps), process {time.perf_counter() - t:.2f} s, "
              f"peak RSS {res['peak_rss_mb']:.0f} MB")
        return
    with tempfile.TemporaryDirectory() as tmp:
        scenario = get_scenario("chat").with_overrides(batch_size=4, decode_steps=19)
        for steps in (20, 80):
            path = Path(tmp) / f"chat{steps}.mtrace"
            synthesize(path, scenario=scenario, num_steps=steps, seed=0)
            res = run(path, "macs,token-drop", args.topology)
            print(f"chat, {steps} steps ({path.stat().st_size / 1e6:.0f} MB): replay "
                  f"{res['wall_s']:.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
