"""``macssim sweep`` through click: a small sweep, resume, bad input as one line."""

from __future__ import annotations

from click.testing import CliRunner

from macssim.cli import main
from macssim.sweep import read_results


def test_sweep_then_resume_then_recommend(small_trace, tmp_path):
    out = tmp_path / "s.parquet"
    args = ["sweep", "--trace", str(small_trace), "--capacity-factor", "1,2", "--policy",
            "token-drop", "--steps", "1", "--out", str(out)]
    runner = CliRunner()
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "2 points run" in first.output and f"results: {out}" in first.output
    # piped: a plain progress line on stderr
    assert "sweep: 2/2 points (0 failed)" in first.stderr
    rows, _ = read_results(out)
    assert sorted({r["capacity_factor"] for r in rows}) == [1.0, 2.0]
    again = runner.invoke(main, args)
    assert again.exit_code == 1 and "already holds a sweep table" in again.output
    resumed = runner.invoke(main, [*args, "--resume"])
    assert resumed.exit_code == 0 and "all 2 points are already in" in resumed.output
    rec = runner.invoke(main, ["recommend", str(out), "--sla", "tokens_per_s>=1"])
    assert rec.exit_code == 0 and "cheapest meeting it" in rec.output


def test_bad_sweeps_are_one_line_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["sweep", "--topology", "8xH100,nope", "--out",
                             str(tmp_path / "x.parquet")])
    assert r.exit_code == 1
    assert r.output.strip().startswith("Error: sweep flags: \"topologies[1]\": unknown topology")
    spec = tmp_path / "empty.yaml"
    spec.write_text("capacity_factors: []\n")
    r = runner.invoke(main, ["sweep", str(spec)])
    assert r.exit_code == 1 and f'{spec}: "capacity_factors" is empty' in r.output
    assert not (tmp_path / "x.parquet").exists()
