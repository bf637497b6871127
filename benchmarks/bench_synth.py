"""Speed and memory of ``macssim synth`` (run on demand; numbers go to docs/synthetic.md).

    python benchmarks/bench_synth.py             # everything (~3 minutes on 2 cores)
    python benchmarks/bench_synth.py --memory    # only the peak-RSS comparison

Speed: tokens/s and steps/s of generation alone (``synthetic_steps``) and of writing a
trace (``synthesize``, with and without ``--compress``), per scenario.

Memory: peak RSS of a fresh process that writes 100 and then 1,000 steps of the
decode-heavy ``chat`` scenario with one prefill batch followed by decode steps
(``decode_steps=999``). The first batch is the same in both runs (the step streams are
keyed by step index), so a difference in peak RSS could only come from growth with steps.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

MODEL = "qwen3-vl-30b-a3b"

# Peak RSS from VmHWM: getrusage's ru_maxrss survives fork + exec on Linux, so a child
# started from a big parent would report the parent's peak.
_CHILD = """
import sys
from macssim.trace import get_scenario, synthesize
scenario = get_scenario("chat").with_overrides(decode_steps=999)
summary = synthesize(sys.argv[1], model="{model}", scenario=scenario,
                     num_steps=int(sys.argv[2]), seed=0)
with open("/proc/self/status") as fh:
    rss = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) // 1024
print(f"{{summary.num_steps}} {{summary.num_tokens}} {{summary.file_bytes}} {{rss}}")
"""


def bench_speed(scenario: str, steps: int) -> None:
    from macssim.trace import get_scenario, synthesize, synthetic_steps

    spec = get_scenario(scenario)
    start = time.perf_counter()
    tokens = sum(s.num_tokens for s in synthetic_steps(MODEL, spec, steps, seed=0))
    gen_s = time.perf_counter() - start
    print(f"{scenario:8s} {steps:4d} steps {tokens:7,d} tokens | generate only: "
          f"{steps / gen_s:7.1f} steps/s {tokens / gen_s:8,.0f} tokens/s")
    with tempfile.TemporaryDirectory() as tmp:
        for compress in (False, True):
            path = os.path.join(tmp, "t.mtrace")
            start = time.perf_counter()
            summary = synthesize(path, model=MODEL, scenario=spec, num_steps=steps, seed=0,
                                 compress=compress)
            wall_s = time.perf_counter() - start
            print(f"{'':8s} {'':4s}       {'':7s}        | write{' -z' if compress else '   '}"
                  f"     : {steps / wall_s:7.1f} steps/s {tokens / wall_s:8,.0f} tokens/s, "
                  f"{summary.file_bytes / tokens / 1e3:5.2f} kB/token")


def bench_memory() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (100, 1000):
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", _CHILD.format(model=MODEL),
                 os.path.join(tmp, f"m{steps}.mtrace"), str(steps)],
                check=True, capture_output=True, text=True).stdout.split()
            wall_s = time.perf_counter() - start
            n, tokens, size, rss = (int(x) for x in out)
            print(f"chat, 1 prefill + {n - 1} decode steps: {tokens:,} tokens, "
                  f"{size / 1e6:.0f} MB file, peak RSS {rss} MB, {wall_s:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="only the peak-RSS comparison")
    args = parser.parse_args()
    if not args.memory:
        for scenario, steps in (("docvqa", 17), ("chat", 129), ("mixed", 33)):
            bench_speed(scenario, steps)
    bench_memory()


if __name__ == "__main__":
    main()
