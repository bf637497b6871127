"""``macssim cost``: one operation's predicted time, to check against your own benchmark.

Two kinds of question. ``gemm``, ``experts``, ``attention``, ``vision``, ``alltoall`` and
``dispatch`` ask what a replay would charge for one operation on a topology: the roofline
and, where the topology's measured tables are found, the measured backend beside it
(collectives: the engine on the flow network). ``predict`` and ``keys`` read one measured
table directly (macssim's format, docs/cost-tables.md), interpolated log-log between
measured neighbours; a query outside the measured range is refused rather than guessed."""

from __future__ import annotations

from pathlib import Path

import click

from macssim._errors import MacssimError
from macssim.cli._output import echo_table, library_errors

__all__ = ["command"]


@click.group("cost")
def command() -> None:
    """Predict one operation's time: what a replay charges for it on a topology (roofline,
    and measured tables where found), or what one measured table says.

    \b
    Examples:
      macssim cost gemm --topology 8xH100 --m 300 --n 4096 --k 7168
      macssim cost experts --topology 8xH100 --rows 512,512,0,0,1024
      macssim cost alltoall --topology 8xH100 --bytes-per-rank 8MiB
      macssim cost dispatch --topology 16xH100 --tokens-per-rank 4096 --engine deepep-normal
      macssim cost convert --system h100_sxm --out tables/     (needs aiconfigurator-core)
      macssim cost predict tables/gemm.csv dtype=bfloat16 m=300 n=4096 k=7168
      macssim cost keys tables/nccl.csv
    """


@command.command("predict")
@click.argument("table", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("keys", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--extrapolate", is_flag=True,
              help="Allow a size up to 2x beyond the measured range (flagged in the output).")
def predict_command(table: Path, keys: tuple[str, ...], extrapolate: bool) -> None:
    """Predicted latency of one operation: KEY=VALUE for each column that identifies it
    (see `macssim cost keys TABLE`); size keys may lie between measured values."""
    from macssim.cost import load_table, predict_detail

    query = {}
    for item in keys:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="KEYS")
        query[name.strip()] = _value(raw.strip())
    try:
        cost = load_table(table)
        result = predict_detail(cost, extrapolate=extrapolate, **query)
    except MacssimError as e:
        raise click.ClickException(str(e)) from e
    how = ("measured" if result.exact else
           "extrapolated" if result.extrapolated else "interpolated")
    echo_table(["op", "latency µs", "how"], [[cost.schema.name, result.latency_s * 1e6, how]])


@command.command("keys")
@click.argument("table", type=click.Path(dir_okay=False, path_type=Path))
def keys_command(table: Path) -> None:
    """The columns a query on TABLE names, and the values measured for each."""
    from macssim.cost import load_table

    try:
        cost = load_table(table)
    except MacssimError as e:
        raise click.ClickException(str(e)) from e
    schema = cost.schema
    rows = []
    for column in schema.exact + schema.sizes:
        values = cost.values(column)
        shown = ", ".join(map(str, values[:8])) + (f", … ({len(values)})" if len(values) > 8
                                                    else "")
        rows.append([column, "size (interpolated)" if column in schema.sizes else "exact",
                     shown])
    click.echo(f"{table}: {schema.name}, {len(cost)} measurements — {schema.doc}\n")
    echo_table(["key", "kind", "measured values"], rows)


@command.command("convert")
@click.option("--system", default="h100_sxm", show_default=True,
              help="aiconfigurator-core system name (h100_sxm, h200_sxm, b200_sxm, …).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for gemm.csv, moe.csv, nccl.csv, deepep.csv (created; an "
              "existing file is never overwritten).")
def convert_command(system: str, out: Path) -> None:
    """Convert aiconfigurator-core's measured tables for one system into macssim's format
    (pip install -e ".[aiconfigurator]"). `macssim replay --tables OUT` then reads
    gemm.csv and moe.csv from it, with no aiconfigurator-core installed."""
    from macssim.cost import save_table, tables_from_aiconfigurator

    try:
        tables = tables_from_aiconfigurator(system)
        targets = {op: out / f"{op}.csv" for op in tables}
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing:
            raise click.ClickException(f"{', '.join(existing)}: exists; macssim never "
                                       "overwrites it — give another --out")
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for op, table in tables.items():
            save_table(table, targets[op])
            rows.append([op, len(table), str(targets[op])])
    except MacssimError as e:
        raise click.ClickException(str(e)) from e
    echo_table(["op", "measurements", "file"], rows)


def _value(raw: str) -> object:
    """An int where the text is one, then a float, else the text (a label)."""
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            continue
    return raw


# ---------------------------------------------------------------------------------------
# What a replay charges for one operation on a topology

_SIZE = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 10**3,
         "MB": 10**6, "GB": 10**9}


def _bytes(text: str) -> float:
    """``8MiB``, ``65536``, ``1.5GB``: a positive byte count."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([KMG]i?B|B)?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise click.BadParameter(f"{text!r}: expected a positive size such as 65536, 64KiB, "
                                 "8MiB, 1GiB", param_hint="--bytes-per-rank")
    return float(m.group(1)) * _SIZE[m.group(2) or ""]


def _topology_option(f):
    return click.option("--topology", default="8xH100", show_default=True,
                        help="Preset name or YAML file (macssim replay --list).")(f)


def _model_option(f):
    return click.option("--model", "model_name", default="qwen3-vl-30b-a3b", show_default=True,
                        help="Model preset whose shapes the operation has.")(f)


def _tables_option(f):
    return click.option("--tables", "tables_dir",
                        type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Measured tables in macssim's format (default: an installed "
                        "aiconfigurator-core's, if any).")(f)


def _backends(topology, tables_dir):
    """(name, cost model) pairs: the roofline, and the measured backend where found."""
    from macssim.cost import ROOFLINE, cost_model_for

    out = [("roofline", ROOFLINE)]
    model, record = cost_model_for(topology, tables=tables_dir, costs="auto")
    if record["backend"] == "measured":
        out.append(("measured", model))
    elif record.get("note"):
        click.echo(record["note"])
    return out


def _load(topology: str, model_name: str | None = None):
    from macssim.hardware import load_topology
    from macssim.trace import get_model_preset

    return load_topology(topology), (get_model_preset(model_name) if model_name else None)


def _echo_backends(what: str, rows: list[list]) -> None:
    click.echo(what)
    echo_table(["backend", "µs", "answered by"], rows)


def _answered(backend) -> str:
    ops = backend.coverage().get("operations") or {}
    if not ops:
        return "roofline"
    return "; ".join(f"{op}: " + ", ".join(hows) for op, hows in ops.items())


@command.command("gemm")
@_topology_option
@click.option("--m", type=click.IntRange(1, 10**7), required=True, help="Rows (tokens).")
@click.option("--n", type=click.IntRange(1, 10**6), required=True, help="Output columns.")
@click.option("--k", type=click.IntRange(1, 10**6), required=True, help="Inner dimension.")
@click.option("--dtype", type=click.Choice(["bf16", "fp8"]), default="bf16", show_default=True)
@_tables_option
def gemm_command(topology, m, n, k, dtype, tables_dir):
    """One dense GEMM [m, k] x [k, n] on one GPU of the topology."""
    import numpy as np

    with library_errors():
        topo, _ = _load(topology)
        rows = []
        for name, backend in _backends(topo, tables_dir):
            t = backend.gemm_s(topo.gpu, np.array([float(m)]), n, k, dtype)
            rows.append([name, float(t[0]) * 1e6, _answered(backend)])
    _echo_backends(f"GEMM m={m} n={n} k={k} {dtype} on {topo.gpu.kind}", rows)


@command.command("experts")
@_topology_option
@_model_option
@click.option("--rows", required=True, help="Kept rows of each of one GPU's experts, comma "
              "separated (e.g. 512,512,0,1024); experts left out have none.")
@click.option("--precision", type=click.Choice(["bf16", "fp8-experts", "fp8"]), default="bf16",
              show_default=True)
@_tables_option
def experts_command(topology, model_name, rows, precision, tables_dir):
    """One GPU's routed-expert phase for its per-expert row counts (grouped GEMM: rows
    padded to tiles, small-expert efficiency, fixed kernels; docs/cluster.md)."""
    import numpy as np

    from macssim.cost import PRECISION_PRESETS

    try:
        counts = [int(x) for x in rows.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{rows!r}: expected integers separated by commas",
                                 param_hint="--rows") from None
    if not counts or min(counts) < 0:
        raise click.BadParameter("expected at least one count, all >= 0", param_hint="--rows")
    with library_errors():
        topo, model = _load(topology, model_name)
        per_gpu = -(-model.num_experts // topo.num_gpus)
        if len(counts) > per_gpu:
            raise click.BadParameter(f"{len(counts)} experts given; one GPU of {topo.name} "
                                     f"holds {per_gpu} of {model.name}'s {model.num_experts}",
                                     param_hint="--rows")
        grid = np.zeros((1, per_gpu), dtype=np.int64)
        grid[0, :len(counts)] = counts
        prec = PRECISION_PRESETS[precision]
        out = []
        for name, backend in _backends(topo, tables_dir):
            t = backend.expert_phase_s(model, topo.gpu, grid, prec)
            out.append([name, float(t[0]) * 1e6, _answered(backend)])
    _echo_backends(f"{model.name} experts on one GPU of {topo.name}: {sum(counts)} rows over "
                   f"{sum(c > 0 for c in counts)} active experts, {precision}", out)


@command.command("attention")
@_topology_option
@_model_option
@click.option("--tokens", type=click.IntRange(1, 10**7), required=True,
              help="Tokens on the GPU in the step.")
@click.option("--context", type=click.IntRange(1, 10**7), required=True,
              help="Context length of each request (tokens attend to up to this many).")
@click.option("--requests", type=click.IntRange(1, 10**6), default=1, show_default=True)
@_tables_option
def attention_command(topology, model_name, tokens, context, requests, tables_dir):
    """One decoder layer's attention on one GPU: a prefill chunk when tokens > requests
    (each request's tokens attend causally up to --context), decode when tokens ==
    requests."""
    import numpy as np

    from macssim.cost import Precision

    with library_errors():
        topo, model = _load(topology, model_name)
        per = tokens / requests
        # Each request's new tokens are its last `per` positions of `context`.
        context_sum = requests * (per * context - per * (per - 1) / 2)
        out = []
        for name, backend in _backends(topo, tables_dir):
            t = backend.attention_s(model, topo.gpu, np.array([float(tokens)]),
                                    np.array([float(requests * context)]),
                                    np.array([context_sum]), Precision())
            out.append([name, float(t[0]) * 1e6, _answered(backend)])
    _echo_backends(f"{model.name} attention, {tokens} tokens of {requests} request(s), context "
                   f"{context}, one GPU of {topo.name}", out)


@command.command("vision")
@_topology_option
@_model_option
@click.option("--tokens", type=click.IntRange(1, 10**8), required=True,
              help="Image and video tokens on the GPU.")
def vision_command(topology, model_name, tokens):
    """The vision encoder on one GPU's image and video tokens (roofline)."""
    import numpy as np

    from macssim.cost import vision_s

    with library_errors():
        topo, model = _load(topology, model_name)
        t = vision_s(model, topo.gpu, np.array([float(tokens)]))
    _echo_backends(f"{model.name} vision encoder, {tokens} tokens on {topo.gpu.kind}",
                   [["roofline", float(t[0]) * 1e6, "roofline"]])


@command.command("alltoall")
@_topology_option
@click.option("--bytes-per-rank", "size", required=True,
              help="Each rank's send buffer, nccl-tests style (each rank sends 1/G of it to "
              "every rank): 65536, 64KiB, 8MiB, 1GiB.")
@click.option("--engine", type=click.Choice(["nccl", "ideal"]), default="nccl",
              show_default=True)
def alltoall_command(topology, size, engine):
    """A uniform all-to-all on the flow network, with nccl-tests' bus bandwidth."""
    import numpy as np

    from macssim.cost import alltoall_s

    nbytes = _bytes(size)
    with library_errors():
        topo, _ = _load(topology)
        g = topo.num_gpus
        done = alltoall_s(topo, np.full((g, g), nbytes / g), engine)
    t = float(done.max())
    click.echo(f"all-to-all, {size} per rank on {topo.name} ({engine})")
    echo_table(["µs", "algbw GB/s", "busbw GB/s"],
               [[t * 1e6, nbytes / t / 1e9, nbytes / t * (g - 1) / g / 1e9]])


@command.command("dispatch")
@_topology_option
@click.option("--tokens-per-rank", type=click.IntRange(1, 10**6), default=4096,
              show_default=True)
@click.option("--hidden", type=click.IntRange(1, 10**6), default=7168, show_default=True)
@click.option("--experts", type=click.IntRange(1, 10**5), default=256, show_default=True)
@click.option("--topk", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--engine", type=click.Choice(["nccl", "deepep-normal", "deepep-ll", "ideal"]),
              default="deepep-normal", show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**31), default=0, show_default=True)
def dispatch_command(topology, tokens_per_rank, hidden, experts, topk, engine, seed):
    """Dispatch (FP8) and combine (BF16) of DeepEP's test routing (random scores; top-4
    node groups across nodes) on the flow network; times as DeepEP's tests take them
    (until a rank has sent and received)."""
    from macssim.cost import benchmark_routing, collective_s
    from macssim.cost._precision import fp8_row_bytes

    with library_errors():
        topo, _ = _load(topology)
        if experts % topo.num_gpus:
            raise click.BadParameter(f"{experts} experts do not divide over {topo.num_gpus} "
                                     "GPUs", param_hint="--experts")
        counts = benchmark_routing(topo, seed, tokens_per_rank, experts, topk)
        rows = []
        for phase, token_bytes in (("dispatch", fp8_row_bytes(hidden)),
                                   ("combine", 2 * hidden)):
            done = collective_s(topo, counts, token_bytes, phase, engine, receivers_wait=True)
            rows.append([phase, float(done.max()) * 1e6, float(done.mean()) * 1e6])
    click.echo(f"{engine}: {tokens_per_rank} tokens per rank, hidden {hidden}, {experts} "
               f"experts, top-{topk} on {topo.name}")
    echo_table(["phase", "slowest rank µs", "mean rank µs"], rows)
