"""A sweep's results as one page a planner can open, forward and act on.

``index.html`` is self-contained (plots embedded as SVG data, styles and the few lines of
script that sort the tables inline; nothing is fetched), with each plot also written
beside it as PNG and SVG and the results as CSV. The page holds what a sweep can answer:

- the Pareto front of throughput per GPU against throughput per user, per policy;
- the cheapest configuration meeting an SLA and what MACS changes in it (when the caller
  gives the recommendation: this stage reads tables, it does not judge them);
- MoE latency against dropped semantic mass across capacity factors;
- EPLB's redundant experts against imbalance (when the sweep varied them);
- what each policy drops per modality;
- every configuration in a sortable table, the failed points with their errors, and the
  commands and versions that made the page.

Rows are the sweep table's (``macssim.sweep.read_results``), as a DataFrame.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from macssim._errors import ReportError  # noqa: E402
from macssim.report._write import Report, ReportWriter  # noqa: E402

__all__ = ["Choice", "write_sweep_report"]

TABLE_COLUMNS = ("point_index", "source", "topology", "num_gpus", "capacity_factor",
                 "precision", "alltoall_engine", "placement", "redundant_experts", "policy",
                 "moe_latency_mean_s", "moe_latency_p99_s", "step_latency_mean_s",
                 "tokens_per_s", "tokens_per_s_per_gpu", "imbalance_mean",
                 "dropped_semantic_mass_frac", "tokens_lost_all_frac")
"""The sortable table's columns, over all steps (kind ``all``)."""

SERVE_COLUMNS = ("point_index", "source", "topology", "num_gpus", "capacity_factor",
                 "precision", "arrival_rate", "policy", "requests", "ttft_s_p90", "ttft_s_p99",
                 "tpot_s_p90", "tpot_s_p99", "sla_ttft_s", "sla_tpot_s", "sla_attainment",
                 "goodput_requests_per_s", "total_tokens_per_s", "gpu_utilisation",
                 "straggler_share")
"""The serving runs' table (kind ``serve``)."""


@dataclass(frozen=True)
class Choice:
    """One configuration the caller picked (e.g. the cheapest meeting an SLA)."""

    label: str
    row: dict[str, Any] | None
    """A results row; None: nothing qualified (``note`` says why)."""
    note: str = ""


@dataclass
class _Page:
    title: str
    sections: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


def write_sweep_report(rows: pd.DataFrame, out_dir: str | os.PathLike, *, source: str,
                       command_line: Sequence[str], versions: dict[str, str],
                       sla: Sequence[str] = (), choices: Sequence[Choice] = (),
                       force: bool = False) -> Report:
    """Write ``index.html``, each plot as PNG and SVG, and ``results.csv`` into
    ``out_dir`` atomically (the rules of ``ReportWriter``: an earlier report is replaced
    only with ``force``, anything else is never touched).

    Args:
        rows: the sweep table; source: where it came from (shown on the page).
        sla: the bounds ``choices`` were judged against, as text.
    """
    if rows.empty:
        raise ReportError(f"{source}: the results table has no rows")
    missing = [c for c in ("status", "policy", "kind", "point_index") if c not in rows]
    if missing:
        raise ReportError(f"{source}: not a macssim sweep table (no column "
                          f"{', '.join(repr(c) for c in missing)})")
    rows = _with_derived(rows)
    ok = rows[rows.status == "ok"]
    served = ok[ok.kind == "serve"]
    ok = ok[ok.kind != "serve"]
    scope = _scope(rows[rows.status == "ok"] if (rows.status == "ok").any() else rows)
    page = _Page(title=f"macssim sweep — {scope}")
    with ReportWriter(out_dir, force=force) as writer:
        out = writer.staging
        if ok.empty and served.empty:
            page.sections.append(_section("No results", "<p>Every point of this sweep failed; "
                                          "their errors are listed below.</p>"))
        if not served.empty:
            _add_plot(page, out, "goodput_vs_rate", _plot_goodput(served, scope),
                      "Goodput against arrival rate",
                      "Requests per second that met the SLA (TTFT and TPOT, stated in the "
                      "table) against the Poisson arrival rate, per policy and topology; the "
                      "dashed line is the offered load. Goodput counts requests over the "
                      "run's whole duration, draining included, so with few requests per "
                      "run it sits below the offered load even when every request meets "
                      "the SLA (sla_attainment in the table says which).")
            _add_plot(page, out, "serve_pareto", _plot_serve_pareto(served, scope),
                      "Serving: throughput per GPU against throughput per user",
                      "Each point is one serving run: all tokens per second over the run "
                      "divided by the GPUs, against 1 / mean TPOT.")
            if choices:
                page.sections.append(_choices_section(choices, sla))
            page.sections.append(_section("Every serving run", _table(
                served, SERVE_COLUMNS, "serving")))
        if not ok.empty:
            _add_plot(page, out, "pareto", _plot_pareto(ok, scope),
                      "Throughput per GPU against throughput per user",
                      "Each point is one configuration × policy. Per GPU: tokens/s over all "
                      "steps divided by the GPUs. Per user: one token per decode step per "
                      "live sequence, i.e. 1 / mean decode step latency (all steps when the "
                      "trace has no decode step). The line joins each policy's Pareto-"
                      "optimal points: none of the policy's other points is better on both.")
            if choices and served.empty:
                page.sections.append(_choices_section(choices, sla))
            _add_plot(page, out, "latency_vs_drops", _plot_latency_vs_drops(ok, scope),
                      "MoE latency against dropped semantic mass",
                      "Mean MoE-layer latency over all steps against the share of semantic "
                      "mass the policy dropped (δ = 1 for every policy), each point labelled "
                      "with its capacity factor γ.")
            if "placement" in ok and (ok.placement == "eplb").any():
                _add_plot(page, out, "eplb_imbalance", _plot_eplb(ok, scope),
                          "EPLB: redundant experts against imbalance",
                          "Mean over layers of the slowest GPU's expert work over the mean "
                          "GPU's, against EPLB's redundant expert slots; contiguous placement "
                          "at 0 for reference.")
            modality = _plot_modality_drops(ok, scope)
            if modality is not None:
                _add_plot(page, out, "drops_by_modality", modality,
                          "What each policy drops, per modality",
                          "Dropped semantic mass per modality, mean over the configurations.")
            page.sections.append(_section(
                "Every configuration", _table(ok[ok.kind == "all"], TABLE_COLUMNS,
                                              "configurations")))
        failed = rows[rows.status != "ok"].drop_duplicates("point_index")
        if not failed.empty:
            page.sections.append(_section("Failed points", _table(
                failed, ("point_index", "source", "topology", "error"), "failed")))
        page.sections.append(_provenance(source, command_line, versions, rows))
        rows.drop(columns=["source"]).to_csv(out / "results.csv", index=False)
        (out / "index.html").write_text(_render(page), encoding="utf-8")
        return writer.seal(ok[ok.kind == "all"] if not ok.empty else
                           served if not served.empty else rows)


def _with_derived(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.copy()
    trace = rows["trace"] if "trace" in rows else pd.Series([None] * len(rows))
    scenario = rows["scenario"] if "scenario" in rows else pd.Series([None] * len(rows))
    rows["source"] = [s if isinstance(s, str) and s else
                      (Path(t).name if isinstance(t, str) and t else "?")
                      for s, t in zip(scenario, trace, strict=True)]
    if "tokens_per_s" in rows and "num_gpus" in rows:
        rows["tokens_per_s_per_gpu"] = rows.tokens_per_s / rows.num_gpus
    return rows


def _values(df: pd.DataFrame, column: str) -> str:
    if column not in df:
        return "?"
    vals = sorted({v for v in df[column].tolist() if v is not None and v == v}, key=str)
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vals) or "?"


def _scope(df: pd.DataFrame) -> str:
    """What every title names: model, topology, trace and γ."""
    return (f"{_values(df, 'model')} · {_values(df, 'topology')} · "
            f"trace {_values(df, 'source')} · γ {_values(df, 'capacity_factor')}")


# --------------------------------------------------------------------------- plots

def _policies(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df.policy.tolist()))


def _figure(title: str, scope: str):
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.set_title(f"{title}\n{scope}", fontsize=10)
    ax.grid(alpha=0.3)
    return fig, ax


def _plot_pareto(ok: pd.DataFrame, scope: str):
    every = ok[ok.kind == "all"].set_index(["point_index", "policy"])
    decode = ok[ok.kind == "decode"].set_index(["point_index", "policy"])
    latency = decode.step_latency_mean_s.reindex(every.index)
    latency = latency.fillna(every.step_latency_mean_s)
    per_user = 1.0 / latency                              # tokens_per_s_per_user
    policy = every.index.get_level_values("policy")
    return _pareto_figure(
        "Throughput per GPU against throughput per user", scope,
        [(name, per_user[policy == name].to_numpy(),
          every.tokens_per_s_per_gpu[policy == name].to_numpy()) for name in _policies(ok)],
        "tokens_per_s_per_user (1 / decode step latency)", "tokens_per_s_per_gpu")


def _plot_goodput(served: pd.DataFrame, scope: str):
    fig, ax = _figure("Goodput against arrival rate", scope)
    groups = served.groupby(["policy", "topology"], sort=False)
    for (policy, topo), g in groups:
        g = g.sort_values("arrival_rate")
        label = policy if served.topology.nunique() == 1 else f"{policy}, {topo}"
        ax.plot(g.arrival_rate, g.goodput_requests_per_s, marker="o", label=label)
    top = float(served.arrival_rate.max())
    ax.plot([0, top], [0, top], linestyle="--", color="grey", linewidth=1,
            label="offered load")
    ax.set_xlabel("arrival_rate (requests/s)")
    ax.set_ylabel("goodput_requests_per_s")
    ax.legend(fontsize=8)
    return fig


def _plot_serve_pareto(served: pd.DataFrame, scope: str):
    by = [served[served.policy == name] for name in _policies(served)]
    return _pareto_figure(
        "Serving: throughput per GPU against throughput per user", scope,
        [(sel.policy.iloc[0], (1.0 / sel.tpot_s_mean).to_numpy(),
          (sel.total_tokens_per_s / sel.num_gpus).to_numpy()) for sel in by],
        "tokens/s per user (1 / tpot_s_mean)", "total_tokens_per_s per GPU")


def _pareto_figure(title: str, scope: str, series, xlabel: str, ylabel: str):
    """One scatter per (name, x, y) and the line through its Pareto front."""
    fig, ax = _figure(title, scope)
    for name, x, y in series:
        line = ax.scatter(x, y, label=name, alpha=0.75)
        front = _pareto_front(x, y)
        ax.plot(x[front], y[front], color=line.get_facecolor()[0], linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return fig


def _pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both x and y, by ascending x."""
    order = np.argsort(-x, kind="stable")
    front, best_y = [], -np.inf
    for i in order:
        if np.isfinite(x[i]) and np.isfinite(y[i]) and y[i] > best_y:
            front.append(i)
            best_y = y[i]
    return np.array(front[::-1], dtype=np.int64)


def _plot_latency_vs_drops(ok: pd.DataFrame, scope: str):
    every = ok[ok.kind == "all"]
    fig, ax = _figure("MoE latency against dropped semantic mass", scope)
    for name in _policies(every):
        sel = every[every.policy == name]
        ax.scatter(sel.dropped_semantic_mass_frac, sel.moe_latency_mean_s * 1e6, label=name,
                   alpha=0.75)
        for _, r in sel.iterrows():
            ax.annotate(f"γ={r.capacity_factor:g}", (r.dropped_semantic_mass_frac,
                                                     r.moe_latency_mean_s * 1e6),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("dropped_semantic_mass_frac")
    ax.set_ylabel("moe_latency_mean_s (µs)")
    ax.legend()
    return fig


def _plot_eplb(ok: pd.DataFrame, scope: str):
    every = ok[ok.kind == "all"]
    fig, ax = _figure("EPLB: redundant experts against imbalance", scope)
    for name in _policies(every):
        sel = every[every.policy == name]
        eplb = sel[sel.placement == "eplb"].groupby("redundant_experts").imbalance_mean.mean()
        line, = ax.plot(eplb.index, eplb.to_numpy(), marker="o", label=f"{name}, eplb")
        contiguous = sel[sel.placement == "contiguous"].imbalance_mean
        if not contiguous.empty:
            ax.scatter([0], [contiguous.mean()], marker="x", color=line.get_color(),
                       label=f"{name}, contiguous")
    ax.set_xlabel("redundant_experts")
    ax.set_ylabel("imbalance_mean (max / mean GPU expert work)")
    ax.legend(fontsize=8)
    return fig


def _plot_modality_drops(ok: pd.DataFrame, scope: str):
    prefix = "dropped_semantic_mass_frac_"
    mods = [c[len(prefix):] for c in ok.columns
            if c.startswith(prefix) and not c.endswith("_vs_token_drop")]
    every = ok[ok.kind == "all"]
    if not mods or every.empty:
        return None
    names = _policies(every)
    fig, ax = _figure("Dropped semantic mass per modality", scope)
    width = 0.8 / len(mods)
    for j, mod in enumerate(mods):
        means = [every[every.policy == n][prefix + mod].mean() for n in names]
        ax.bar(np.arange(len(names)) + j * width, means, width, label=mod)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    ax.set_ylabel("dropped_semantic_mass_frac (mean over configurations)")
    ax.legend()
    return fig


def _add_plot(page: _Page, out: Path, name: str, fig, heading: str, caption: str) -> None:
    """Save ``fig`` as NAME.png and NAME.svg and embed the SVG in the page."""
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    svg = io.BytesIO()
    fig.savefig(svg, format="svg", bbox_inches="tight")
    plt.close(fig)
    (out / f"{name}.svg").write_bytes(svg.getvalue())
    data = base64.b64encode(svg.getvalue()).decode("ascii")
    page.plots.append(name)
    page.sections.append(_section(heading, (
        f'<figure data-plot="{name}"><img alt="{html.escape(heading)}" '
        f'src="data:image/svg+xml;base64,{data}">'
        f"<figcaption>{html.escape(caption)} Also as {name}.png and {name}.svg."
        "</figcaption></figure>")))


# --------------------------------------------------------------------------- tables

def _cell(value: Any) -> tuple[str, str]:
    """(text, sort key) of one table cell."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a", ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}", repr(float(value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value), str(int(value))
    return str(value), str(value)


def _table(df: pd.DataFrame, columns: Sequence[str], name: str) -> str:
    cols = [c for c in columns if c in df]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            text, key = _cell(r[c])
            numeric = ' class="num"' if key and _is_number(key) else ""
            cells.append(f'<td data-sort="{html.escape(key)}"{numeric}>{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="sortable" data-table="{name}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
            "<p class=\"hint\">Click a column's name to sort by it.</p>")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _choices_section(choices: Sequence[Choice], sla: Sequence[str]) -> str:
    shown = ("label", "point_index", "source", "topology", "num_gpus", "capacity_factor",
             "placement", "redundant_experts", "policy", "moe_latency_p99_s",
             "step_latency_mean_s", "tokens_per_s_per_gpu", "dropped_semantic_mass_frac")
    records = pd.DataFrame([{**(ch.row or {}),
                             "label": ch.label + (f" ({ch.note})" if ch.note else "")}
                            for ch in choices])
    intro = ("<p>SLA: " + html.escape(", ".join(sla) or "none") + ". Cheapest: the fewest "
             "GPUs, then the fewest GPU-seconds per token, then the least dropped semantic "
             "mass (as <code>macssim recommend</code> judges).</p>")
    return _section("Cheapest configuration meeting the SLA",
                    intro + _table(_with_derived(records), shown, "recommendation")
                    + _macs_change(choices))


def _macs_change(choices: Sequence[Choice]) -> str:
    """One sentence: the cheapest MACS configuration against the cheapest Token Drop one."""
    by_policy = {ch.row.get("policy"): ch.row for ch in choices if ch.row}
    macs, td = by_policy.get("macs"), by_policy.get("token-drop")
    if macs is None or td is None:
        return ""
    parts = []
    if macs.get("num_gpus") != td.get("num_gpus"):
        parts.append(f"{td.get('num_gpus')} → {macs.get('num_gpus')} GPUs")
    for name in ("tokens_per_s", "moe_latency_p99_s", "dropped_semantic_mass_frac"):
        a, b = td.get(name), macs.get(name)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a:
            parts.append(f"{name} {(b - a) / a * 100:+.1f} %")
    return ("<p><strong>What MACS changes</strong> (its cheapest configuration meeting the "
            "SLA against Token Drop's): " + html.escape(", ".join(parts)) + ".</p>")


def _provenance(source: str, command_line: Sequence[str], versions: dict[str, str],
                rows: pd.DataFrame) -> str:
    made = " ".join(command_line)
    ver = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                  for k, v in versions.items())
    sweep_versions = _values(rows, "macssim_version")
    return _section("How this page was made", (
        f"<p>Results: <code>{html.escape(source)}</code> ({len(rows)} rows, "
        f"{rows.point_index.nunique()} points, written by macssim {html.escape(sweep_versions)})."
        f"</p><p>Page: <code>{html.escape(made)}</code></p>"
        f'<table data-table="versions"><thead><tr><th>package</th><th>version</th></tr>'
        f"</thead><tbody>{ver}</tbody></table>"))


def _section(heading: str, body: str) -> str:
    return f"<section><h2>{html.escape(heading)}</h2>{body}</section>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
figure { margin: 0; } figure img { max-width: 100%; }
figcaption, .hint { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; }
th { background: #f4f4f4; cursor: pointer; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
section { overflow-x: auto; }
"""

_SCRIPT = """
document.body.dataset.errors = "0";
window.addEventListener("error", function () {
  document.body.dataset.errors = String(Number(document.body.dataset.errors) + 1);
});
function sortBy(th) {
  var table = th.closest("table"), body = table.tBodies[0];
  var col = Array.prototype.indexOf.call(th.parentNode.children, th);
  var up = th.dataset.order !== "asc";
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
    var nx = parseFloat(x), ny = parseFloat(y), c;
    if (x === "" || y === "") { c = (x === "") - (y === ""); }
    else if (!isNaN(nx) && !isNaN(ny)) { c = nx - ny; } else { c = x < y ? -1 : x > y ? 1 : 0; }
    return up ? c : -c;
  });
  rows.forEach(function (r) { body.appendChild(r); });
  th.dataset.order = up ? "asc" : "desc";
}
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () { sortBy(th); });
});
window.addEventListener("load", function () {
  var shown = Array.prototype.filter.call(document.images, function (i) {
    return i.complete && i.naturalWidth > 0; });
  document.body.dataset.plotsShown = String(shown.length);
});
document.body.dataset.ready = "1";
"""


def _render(page: _Page) -> str:
    plots = " ".join(page.plots)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(page.title)}</title><style>{_STYLE}</style></head>"
            f'<body data-plots="{plots}"><h1>{html.escape(page.title)}</h1>'
            + "".join(page.sections) + f"<script>{_SCRIPT}</script></body></html>\n")
