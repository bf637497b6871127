"""Per-expert loads behind each policy's MoE-layer latency on a trace's prefill step, so a
latency difference between policies can be explained from the rows each GPU's experts
get (docs/policies.md, "What the per-expert expert phase changes").

    python benchmarks/expert_phase_loads.py                          # bundled trace, 8xH100
    python benchmarks/expert_phase_loads.py --trace my.mtrace --topology 16xH100

For the first prefill step, per policy: the replay's MoE-layer latency (mean over layers)
and its ratio to vanilla; and, from each layer's rows per expert slot (``LayerLoad``), the
most rows on a GPU, the hottest expert's rows, the slowest GPU's padded rows and active
experts, the padding waste, and the slowest GPU's expert phase on the roofline (means over
layers). Deterministic (the policies and the simulator are).
"""

from __future__ import annotations

import argparse

import numpy as np

from macssim._resources import DEFAULT_TRACE
from macssim.cluster import RequestAssigner
from macssim.cluster._load import ExpertMap, LayerRouting, layer_load
from macssim.cost import GROUPED_GEMM, ROOFLINE, Precision, padded_rows
from macssim.cost._precision import row_bytes
from macssim.hardware import load_topology
from macssim.placement import contiguous_placement
from macssim.policies import expert_labels_from_trace
from macssim.replay import ReplayConfig, replay
from macssim.replay._run import _build_policies, plans_for_step
from macssim.trace import open_trace

POLICIES = ("vanilla", "macs", "expanded-drop", "token-drop")


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(DEFAULT_TRACE))
    parser.add_argument("--topology", default="8xH100")
    args = parser.parse_args(argv)

    trace = open_trace(args.trace)
    model = trace.model
    topo = load_topology(args.topology)
    placement = contiguous_placement(model.num_experts, topo.num_gpus)
    experts = ExpertMap.from_placement(placement)
    config = ReplayConfig(trace=args.trace, policies=POLICIES, topology=args.topology,
                          costs="roofline")
    policies = _build_policies(config, trace.has("scores"))
    labels = expert_labels_from_trace(trace)
    step = next(s for s in trace if s.kind == "prefill")
    token_gpu = RequestAssigner(topo.num_gpus).assign(step.request_id)
    placement_t = torch.from_numpy(placement.expert_to_gpu)
    result = replay(ReplayConfig(trace=args.trace, policies=POLICIES, topology=args.topology,
                                 costs="roofline", max_steps=step.index + 1))
    steps = result.steps[result.steps.kind == "prefill"]
    latency = {r.policy: r.moe_latency_s / model.num_moe_layers * 1e6
               for r in steps.itertuples()}

    print(f"{trace.path.name}: prefill step {step.index}, {step.num_tokens} tokens, "
          f"{model.name} on {topo.name}\n")
    print("| policy | MoE layer µs | vs vanilla | most rows on a GPU | hottest expert's rows "
          "| padded rows, slowest GPU | active experts, slowest GPU | padding waste | "
          "expert phase, slowest GPU µs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in POLICIES:
        stats = []
        for plan in plans_for_step(step, model, policies[name], placement_t, labels,
                                   torch.device("cpu"), token_gpu):
            routing = LayerRouting(plan.expert_ids.numpy(), plan.kept.numpy())
            load = layer_load(routing, token_gpu, experts, row_bytes(model, "bf16"),
                              where=name, gpus_per_node=topo.gpus_per_node)
            rows = load.rows_per_slot
            phase = ROOFLINE.expert_phase_s(model, topo.gpu, rows, Precision())
            slow = int(np.argmax(phase))
            padded = padded_rows(rows, GROUPED_GEMM.tile_rows)
            stats.append((rows.sum(axis=1).max(), rows.max(), padded[slow].sum(),
                          (rows[slow] > 0).sum(), padded.sum() / max(rows.sum(), 1) - 1,
                          phase[slow] * 1e6))
        m = np.mean(np.array(stats, dtype=np.float64), axis=0)
        print(f"| {name} | {latency[name]:.1f} | {latency[name] / latency['vanilla']:.3f} "
              f"| {m[0]:,.0f} | {m[1]:,.0f} | {m[2]:,.0f} | {m[3]:.1f} | {m[4]:.0%} "
              f"| {m[5]:.1f} |")


if __name__ == "__main__":
    main()
