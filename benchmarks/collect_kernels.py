"""Measure GEMM, MoE-layer and all-to-all latencies on this machine's GPU into macssim's
table format (docs/cost-tables.md), so ``macssim replay --tables DIR`` runs on your own
hardware's numbers instead of the roofline or NVIDIA's tables.

    python benchmarks/collect_kernels.py --out tables/ --system h200_sxm       # one GPU
    torchrun --nproc-per-node 8 benchmarks/collect_kernels.py --out tables/ \\
        --system h100_sxm --ops nccl                                           # all-to-all
    python benchmarks/collect_kernels.py --device cpu --quick --out /tmp/t     # a dry run

What each op measures (the ``kernel`` column says which implementation ran):

- ``gemm``: ``torch.matmul`` in BF16 (kernel ``torch_matmul``) and, on GPUs with FP8
  tensor cores, ``torch._scaled_mm`` with per-tensor scales (kernel ``torch_scaled_mm``,
  dtype ``fp8``), for the projection shapes of the model presets, m = 1 … 16384.
- ``moe``: one rank's routed experts under EP, balanced routing: the rank's tokens·topk/ep
  rows spread evenly over its experts/ep experts, each expert a SwiGLU (gate-up GEMM, SiLU
  and multiply, down GEMM) looped in PyTorch (kernel ``torch_loop``). This is an upper bound
  on a fused grouped-GEMM kernel (vLLM's or SGLang's fused MoE pads rows to tiles but
  launches 3–5 kernels for all experts, not 3 per expert): record a fused kernel's numbers
  under its own ``kernel`` name if you have one.
- ``nccl``: ``torch.distributed.all_to_all_single`` under torchrun (NCCL on GPUs), the
  nccl-tests convention (bytes_per_rank is each rank's send buffer), 64 KiB … 512 MiB.

Timing: CUDA events around ``--repeat`` launches after ``--warmup`` (a GPU), else wall
clock; the median of the repeats. Every row records the machine in ``source``.

This script has only been run on CPU (the test suite does a ``--device cpu --quick`` dry
run); its first run on a GPU is to be checked against ``macssim cost gemm`` and NVIDIA's
tables (docs/validation.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from macssim.cost import save_table, table_from_frame
from macssim.trace import get_model_preset, list_model_presets

GEMM_M = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
MOE_TOKENS = [1, 4, 16, 64, 256, 1024, 4096, 16384]
NCCL_BYTES = [1 << p for p in range(16, 30)]


def timer(device: torch.device, warmup: int, repeat: int):
    """``measure(fn)`` -> median seconds of one call of ``fn``."""
    def measure(fn) -> float:
        for _ in range(warmup):
            fn()
        samples = []
        if device.type == "cuda":
            for _ in range(repeat):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1e3)
        else:
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        return statistics.median(samples)
    return measure


def gemm_shapes(quick: bool) -> list[tuple[int, int]]:
    """(n, k) of every projection of the model presets: QKV, output, expert gate-up and
    down, dense MLP."""
    shapes = set()
    for name in list_model_presets():
        m = get_model_preset(name)
        q, kv, h = m.num_attention_heads * m.head_dim, m.num_kv_heads * m.head_dim, m.hidden_size
        shapes |= {(q + 2 * kv, h), (h, q), (2 * m.expert_intermediate_size, h),
                   (h, m.expert_intermediate_size)}
    shapes = sorted(shapes)
    return [(64, 128), (128, 64)] if quick else shapes


def collect_gemm(device, measure, quick: bool, common: dict) -> list[dict]:
    rows = []
    ms = [1, 8, 64] if quick else GEMM_M
    fp8 = (device.type == "cuda" and hasattr(torch, "_scaled_mm")
           and torch.cuda.get_device_capability(device) >= (8, 9))
    for n, k in gemm_shapes(quick):
        w = torch.randn(k, n, device=device, dtype=torch.bfloat16)
        w8 = w.to(torch.float8_e4m3fn).t().contiguous().t() if fp8 else None
        one = torch.ones((), device=device)
        for m in ms:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            t = measure(lambda x=x, w=w: torch.matmul(x, w))
            rows.append({**common, "op": "gemm", "kernel": "torch_matmul",
                         "dtype": "bfloat16", "m": m, "n": n, "k": k, "latency_s": t})
            if fp8 and m % 16 == 0:
                x8 = x.to(torch.float8_e4m3fn)
                t = measure(lambda x8=x8, w8=w8, one=one: torch._scaled_mm(
                    x8, w8, one, one, out_dtype=torch.bfloat16))
                rows.append({**common, "op": "gemm", "kernel": "torch_scaled_mm",
                             "dtype": "fp8", "m": m, "n": n, "k": k, "latency_s": t})
    return rows


def collect_moe(device, measure, quick: bool, common: dict, ep: int) -> list[dict]:
    rows = []
    names = ["qwen3-vl-30b-a3b"] if quick else list_model_presets()
    for name in names:
        model = get_model_preset(name)
        h, inter, e, k = (model.hidden_size, model.expert_intermediate_size,
                          model.num_experts, model.top_k)
        if quick:
            h, inter = 64, 32
        local = max(1, e // ep)
        gate_up = [torch.randn(h, 2 * inter, device=device, dtype=torch.bfloat16)
                   for _ in range(local)]
        down = [torch.randn(inter, h, device=device, dtype=torch.bfloat16)
                for _ in range(local)]
        for tokens in ([1, 16, 64] if quick else MOE_TOKENS):
            rows_total = tokens * k // ep
            per = [rows_total // local + (i < rows_total % local) for i in range(local)]
            xs = [torch.randn(r, h, device=device, dtype=torch.bfloat16) for r in per]

            def layer(xs=xs, gate_up=gate_up, down=down):
                for x, wg, wd in zip(xs, gate_up, down, strict=True):
                    if x.shape[0]:
                        g, u = torch.matmul(x, wg).chunk(2, dim=-1)
                        torch.matmul(torch.nn.functional.silu(g) * u, wd)

            rows.append({**common, "op": "moe", "kernel": "torch_loop", "dtype": "bfloat16",
                         "distribution": "balanced", "hidden": h, "inter": inter,
                         "experts": e, "topk": k, "tp": 1, "ep": ep, "tokens": tokens,
                         "latency_s": measure(layer)})
    return rows


def collect_nccl(device, measure, quick: bool, common: dict) -> list[dict]:
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    for size in ([1 << 16] if quick else NCCL_BYTES):
        elems = size // 2 // world * world
        send = torch.randn(elems, device=device, dtype=torch.bfloat16)
        recv = torch.empty_like(send)

        def step(send=send, recv=recv):
            dist.all_to_all_single(recv, send)

        dist.barrier()
        t = torch.tensor([measure(step)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)   # nccl-tests reports the slowest rank
        if rank == 0:
            rows.append({**common, "op": "nccl", "kernel": "all_to_all_single",
                         "dtype": "bfloat16", "collective": "alltoall", "ranks": world,
                         "bytes_per_rank": elems * 2, "latency_s": float(t.item())})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="directory for gemm.csv, moe.csv, nccl.csv (created; existing "
                        "files are not overwritten)")
    parser.add_argument("--system", required=True, help="name the tables carry (h100_sxm, …)")
    parser.add_argument("--framework", default="torch")
    parser.add_argument("--version", default=torch.__version__)
    parser.add_argument("--ops", default="gemm,moe", help="comma-separated: gemm, moe, nccl")
    parser.add_argument("--ep", type=int, default=8, help="EP size the moe rows stand for")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: check the pipeline")
    args = parser.parse_args(argv)

    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = sorted(set(ops) - {"gemm", "moe", "nccl"})
    if unknown:
        parser.error(f"unknown --ops {unknown}; known: gemm, moe, nccl")
    device = torch.device(args.device)
    if "nccl" in ops:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    common = {"system": args.system, "framework": args.framework, "version": args.version,
              "source": f"benchmarks/collect_kernels.py on {name}, torch {torch.__version__}"}
    measure = timer(device, args.warmup, args.repeat)
    tables = {}
    with torch.inference_mode():
        if "gemm" in ops:
            tables["gemm"] = collect_gemm(device, measure, args.quick, common)
        if "moe" in ops:
            tables["moe"] = collect_moe(device, measure, args.quick, common, args.ep)
        if "nccl" in ops:
            tables["nccl"] = collect_nccl(device, measure, args.quick, common)
    if "nccl" in ops and torch.distributed.get_rank() != 0:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for op, rows in tables.items():
        target = args.out / f"{op}.csv"
        if target.exists():
            raise SystemExit(f"{target}: exists; not overwritten — give another --out")
        save_table(table_from_frame(pd.DataFrame(rows), where=f"collected {op}"), target)
        print(f"{target}: {len(rows)} measurements")


if __name__ == "__main__":
    main()
