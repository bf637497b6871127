"""How fast the cluster model runs (and, with --validate, how close it is to published
all-to-all bandwidths).

Two workloads, both Qwen3-VL-30B-A3B-sized (48 MoE layers, 128 experts, top-8, hidden 2048):

1. ``prefill``: one 8,192-token prefill step (64 requests × 128 tokens, 70 % image tokens)
   on 8 to 128 H100s (32xH100 is 64xH100 with four nodes), each timed on the compiled flow
   network (``SimOptions.flow_solver="fast"``, median of ``--repeat`` runs) and on the
   reference numpy network (once, up to ``--old-max-gpus``) in the same run: CPU seconds
   per step (``time.process_time``), simulated time over CPU time, the speed-up, and how
   the cost grows with the number of GPUs (the exponent between neighbouring rows).
2. ``default-trace``: the shape of the bundled default trace, a ~1.2k-token prefill then
   15 decode steps, replayed under three routing variants (all kept; 10 % and 30 % of
   assignments dropped) on 8xH100: the replay target is < 10 s in total.

Routing is synthetic (log-normal expert popularity, one draw per layer, fixed seed): the
simulator's cost depends on how many GPU pairs exchange tokens, not on which experts.

    python benchmarks/bench_cluster.py                       # both workloads
    python benchmarks/bench_cluster.py --old-max-gpus 128    # the old path on 128 GPUs too
    python benchmarks/bench_cluster.py --topologies 8xH100 --flow-end-rtol 0.02
    python benchmarks/bench_cluster.py --validate            # docs/validation.md table
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time

import numpy as np

from macssim import MacssimError
from macssim.cluster import (
    LayerRouting,
    RequestAssigner,
    SimOptions,
    assign_requests_to_gpus,
    simulate_step,
)
from macssim.hardware import load_topology
from macssim.placement import contiguous_placement
from macssim.trace import get_model_preset

RANDOM_SEED = 2026
MODEL = "qwen3-vl-30b-a3b"
PREFILL_TOKENS = 8192          # tokens in the prefill step
PREFILL_REQUESTS = 64          # 128 tokens each, so that 64 GPUs all run attention
IMAGE_FRACTION = 0.7           # share of image tokens (chart/doc prompts are image-heavy)
POPULARITY_SIGMA = 1.0         # log-normal sigma of expert popularity per layer
TRACE_PREFILL_TOKENS = 1200    # the default trace's prefill (one request)
TRACE_DECODE_STEPS = 15


def synthetic_layers(rng, num_tokens, model, drop_fraction=0.0):
    """One LayerRouting per MoE layer: top-k by Gumbel-perturbed log-popularity."""
    layers = []
    for _ in range(model.num_moe_layers):
        popularity = rng.lognormal(0.0, POPULARITY_SIGMA, model.num_experts)
        scores = rng.gumbel(size=(num_tokens, model.num_experts)) + np.log(popularity)
        ids = np.argpartition(-scores, model.top_k - 1, axis=1)[:, :model.top_k]
        kept = rng.random(ids.shape) >= drop_fraction
        layers.append(LayerRouting(ids, kept))
    return layers


def prefill_topology(name):
    """A preset, or ``<N>xH100`` built from 64xH100 with N / 8 nodes."""
    try:
        return load_topology(name)
    except MacssimError:
        gpus = int(name.split("x")[0])
        base = load_topology("64xH100")
        return dataclasses.replace(base, name=name, nodes=gpus // base.gpus_per_node)


def prefill_inputs(topology):
    """Everything ``simulate_step`` takes for the prefill workload on ``topology``."""
    model = get_model_preset(MODEL)
    topo = prefill_topology(topology)
    rng = np.random.default_rng(RANDOM_SEED)
    per_request = PREFILL_TOKENS // PREFILL_REQUESTS
    request_id = np.repeat(np.arange(PREFILL_REQUESTS), per_request)
    return dict(topo=topo, model=model,
                placement=contiguous_placement(model.num_experts, topo.num_gpus),
                step_kind="prefill",
                position=np.tile(np.arange(per_request), PREFILL_REQUESTS),
                modality=(rng.random(PREFILL_TOKENS) < IMAGE_FRACTION).astype(np.uint8),
                layers=synthetic_layers(rng, PREFILL_TOKENS, model),
                token_gpu=assign_requests_to_gpus(request_id, topo.num_gpus),
                request_id=request_id)


def time_step(inputs, options):
    """(CPU seconds, wall seconds, result) of one simulated step."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = simulate_step(inputs["topo"], inputs["model"], inputs["placement"],
                           inputs["step_kind"], token_gpu=inputs["token_gpu"],
                           position=inputs["position"], modality=inputs["modality"],
                           layers=inputs["layers"], request_id=inputs["request_id"],
                           options=options)
    return time.process_time() - cpu, time.perf_counter() - wall, result


def bench_prefill(topologies, options, repeat, old_max_gpus):
    """The prefill table: old (reference network) against new (compiled), same run."""
    new_options = dataclasses.replace(options, flow_solver="fast")
    old_options = dataclasses.replace(options, flow_solver="reference")
    warm = prefill_inputs("8xH100")
    time_step(warm, new_options)   # loads (or compiles) the kernels outside the timings
    print("| GPUs | old CPU s | new CPU s | speed-up | simulated step | simulated / CPU "
          "(old) | simulated / CPU (new) | growth (new) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    previous = None
    for name in topologies:
        inputs = prefill_inputs(name)
        gpus = inputs["topo"].num_gpus
        runs = [time_step(inputs, new_options) for _ in range(repeat)]
        new_cpu = statistics.median(r[0] for r in runs)
        simulated = runs[0][2].step_latency_s
        old_cpu = None
        if gpus <= old_max_gpus:
            old_cpu, _, old_result = time_step(inputs, old_options)
            gap = abs(old_result.step_latency_s - simulated) / simulated
            if gap > 1e-9:
                raise SystemExit(f"{name}: the step lasts {simulated!r} s on the fast network, "
                                 f"{old_result.step_latency_s!r} s on the reference")
        growth = ("" if previous is None else
                  f"G^{math.log(new_cpu / previous[1]) / math.log(gpus / previous[0]):.2f}")
        previous = (gpus, new_cpu)
        old = "—" if old_cpu is None else f"{old_cpu:.3g}"
        speedup = "—" if old_cpu is None else f"{old_cpu / new_cpu:.0f}×"
        old_ratio = "—" if old_cpu is None else f"{simulated / old_cpu:.1e}"
        print(f"| {gpus} | {old} | {new_cpu:.3g} | {speedup} | {simulated * 1e3:.2f} ms | "
              f"{old_ratio} | {simulated / new_cpu:.1e} | {growth} |", flush=True)


def bench_default_trace(options):
    model = get_model_preset(MODEL)
    topo = load_topology("8xH100")
    placement = contiguous_placement(model.num_experts, topo.num_gpus)
    total_wall = 0.0
    for variant, drop in (("all kept", 0.0), ("10% dropped", 0.1), ("30% dropped", 0.3)):
        rng = np.random.default_rng(RANDOM_SEED)
        assigner = RequestAssigner(topo.num_gpus)
        steps = [("prefill", np.zeros(TRACE_PREFILL_TOKENS, np.int64),
                  np.arange(TRACE_PREFILL_TOKENS))]
        steps += [("decode", np.zeros(1, np.int64), np.array([TRACE_PREFILL_TOKENS + i]))
                  for i in range(TRACE_DECODE_STEPS)]
        routed = [(kind, rid, pos, synthetic_layers(rng, rid.size, model, drop))
                  for kind, rid, pos in steps]
        modality = {n: (rng.random(n) < IMAGE_FRACTION).astype(np.uint8)
                    for n in {rid.size for _, rid, _ in steps}}
        wall = time.perf_counter()
        simulated = 0.0
        for i, (kind, rid, pos, layers) in enumerate(routed):
            result = simulate_step(topo, model, placement, kind,
                                   token_gpu=assigner.assign(rid), position=pos,
                                   modality=modality[rid.size], layers=layers,
                                   request_id=rid, step_index=i, options=options)
            simulated += result.step_latency_s
        wall = time.perf_counter() - wall
        total_wall += wall
        print(f"default-trace shape, {variant:>11}: {len(routed)} steps, wall {wall:6.3f} s, "
              f"simulated {simulated * 1e3:.3f} ms")
    print(f"default-trace shape, 3 variants: wall {total_wall:.3f} s in total (target < 10 s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topologies", default="8xH100,16xH100,32xH100,64xH100,128xH100",
                        help="comma-separated presets (or <N>xH100) for the prefill benchmark")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of the fast path per topology (the median is reported)")
    parser.add_argument("--old-max-gpus", type=int, default=64,
                        help="time the reference network up to this many GPUs")
    parser.add_argument("--flow-end-rtol", type=float, default=0.0,
                        help="SimOptions.flow_end_rtol (0 = exact max-min fluid)")
    parser.add_argument("--alltoall", default=None,
                        help="SimOptions.alltoall: nccl, deepep-normal, deepep-ll, ideal "
                        "(default: the topology's)")
    parser.add_argument("--flow-solver", default="fast", choices=("fast", "reference"),
                        help="SimOptions.flow_solver of the default-trace run")
    parser.add_argument("--skip-trace", action="store_true", help="skip the default-trace run")
    parser.add_argument("--validate", action="store_true",
                        help="print the docs/validation.md table instead")
    args = parser.parse_args()
    if args.validate:
        from macssim.cost._published import validation_markdown

        print(validation_markdown(), end="")
        return
    options = SimOptions(flow_end_rtol=args.flow_end_rtol, alltoall=args.alltoall)
    if args.flow_end_rtol == 0:
        bench_prefill([t.strip() for t in args.topologies.split(",")], options, args.repeat,
                      args.old_max_gpus)
    else:   # the fast network is exact only: time the reference alone
        for topology in args.topologies.split(","):
            cpu, wall, result = time_step(prefill_inputs(topology.strip()), options)
            print(f"prefill {topology:>8}: cpu {cpu:7.3f} s  simulated "
                  f"{result.step_latency_s * 1e3:8.3f} ms")
    if not args.skip_trace:
        bench_default_trace(dataclasses.replace(options, flow_solver=args.flow_solver))


if __name__ == "__main__":
    main()
