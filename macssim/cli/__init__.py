"""The ``macssim`` command. Each subcommand is a thin click wrapper around one library
function; a ``MacssimError`` becomes one line on stderr and exit code 1."""

from __future__ import annotations

import click

from macssim import __version__

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="macssim")
def main() -> None:
    """Plan expert-parallel MoE inference clusters by replaying real routing.

    \b
    Start here:
      macssim replay --policy macs,token-drop --topology 8xH100
          replay the bundled trace under two policies on an 8xH100 box
      macssim synth --model qwen3-vl-30b-a3b --scenario docvqa --steps 64 --out my.mtrace
          make a synthetic trace (no GPU needed)
      macssim capture --tiny qwen3-vl-moe --out tiny.mtrace
          capture routing from a model with torch hooks
      macssim trace info my.mtrace
          what a trace holds
      macssim cost predict tables/gemm.csv dtype=bfloat16 m=300 n=4096 k=7168
          one operation's time from a measured kernel table
      macssim sweep --topology 8xH100,16xH100 --capacity-factor 1,1.25 --out results.parquet
          replay many cluster designs into one table (--arrival-rate: serving runs)
      macssim report results.parquet --sla moe_latency_p99_s<=0.00035
          a self-contained HTML page of the table: Pareto fronts, the cheapest design
    """


def _register() -> None:
    import importlib

    for module in ("trace", "synth", "replay", "capture", "cost", "serve", "sweep", "recommend",
                   "report"):
        try:
            mod = importlib.import_module(f"macssim.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"macssim.cli.{module}":
                continue  # that stage's command is not built yet
            raise
        main.add_command(mod.command)


_register()
