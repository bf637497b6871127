"""``macssim synth`` through click's CliRunner: it writes a trace that ``open_trace``
reads, prints its summary, and turns bad names into one ``Error:`` line."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from macssim.cli import main
from macssim.trace import list_scenarios, open_trace


def _run(*args: str):
    return CliRunner().invoke(main, ["synth", *args])


def test_synth_writes_a_readable_trace(tmp_path) -> None:
    out = tmp_path / "t.mtrace"
    result = _run("--model", "qwen3-vl-30b-a3b", "--scenario", "chartqa", "--steps", "3",
                  "--seed", "1", "--batch-size", "1", "--decode-steps", "2", "--out", str(out),
                  "--compress")
    assert result.exit_code == 0, result.output
    trace = open_trace(out)
    steps = list(trace)
    assert [s.kind for s in steps] == ["prefill", "decode", "decode"]
    assert trace.provenance["scenario_settings"]["batch_size"] == 1
    assert trace.provenance["scenario_settings"]["decode_steps"] == 2
    tokens = sum(s.num_tokens for s in steps)
    image = sum(int((s.modality == 1).sum()) for s in steps)
    assert f"{tokens:,}" in result.output and f"{image:,}" in result.output
    assert "3 (1 prefill, 2 decode)" in result.output
    assert "expert load max/mean" in result.output
    assert result.output.rstrip().endswith(f"wrote {out}")
    counts = np.zeros((48, 128))
    for s in steps:
        for layer in range(48):
            counts[layer] += np.bincount(s.topk_ids[layer].ravel(), minlength=128)
    worst = (counts.max(axis=1) / counts.mean(axis=1)).max()
    assert f"worst layer {worst:.2f}" in result.output


def test_same_command_same_bytes(tmp_path) -> None:
    args = ["--scenario", "chat", "--steps", "2", "--batch-size", "1", "--seed", "7"]
    a, b = tmp_path / "a.mtrace", tmp_path / "b.mtrace"
    assert _run(*args, "--out", str(a)).exit_code == 0
    assert _run(*args, "--out", str(b)).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_list_scenarios() -> None:
    result = _run("--list-scenarios")
    assert result.exit_code == 0
    for name in list_scenarios():
        assert f"\n{name} " in "\n" + result.output


def test_unknown_names_fail_with_known_ones(tmp_path) -> None:
    result = _run("--scenario", "ocr", "--out", str(tmp_path / "x.mtrace"))
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: unknown scenario 'ocr'; known: "
                                     + ", ".join(list_scenarios()))
    result = _run("--model", "nope", "--steps", "1", "--out", str(tmp_path / "x.mtrace"))
    assert result.exit_code == 1
    assert "Error: unknown model preset 'nope'; known: " in result.output
    assert "qwen3-vl-30b-a3b" in result.output
    assert not (tmp_path / "x.mtrace").exists()


def test_bad_numbers_are_refused_by_click() -> None:
    result = _run("--steps", "0")
    assert result.exit_code == 2 and "--steps" in result.output


@pytest.mark.parametrize("args, says", [
    (["--batch-size", str(10**12)], "'--batch-size': 1000000000000 is not in the range"),
    (["--batch-size", "65536"], "--batch-size: scenario 'docvqa': \"batch_size\" 65536 × the "
                                "longest prompt a request may have (3680 tokens)"),
    (["--steps", str(10**12)], "'--steps'"),
    (["--decode-steps", str(10**12)], "'--decode-steps'"),
    (["--seed", "-1"], "'--seed'"),
    (["--seed", str(2**64)], "'--seed'"),
])
def test_absurd_sizes_are_refused_before_anything_is_allocated(tmp_path, args, says) -> None:
    result = _run(*args, "--out", str(tmp_path / "x.mtrace"))
    assert result.exit_code == 2 and says in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_a_bad_scenario_file_is_named(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nbatch_size: .inf\ndecode_steps: 1\nrequests:\n"
                    "  - {kind: a, text_tokens: [1, 2]}\n")
    result = _run("--scenario", str(path), "--steps", "1", "--out", str(tmp_path / "x.mtrace"))
    assert result.exit_code == 1
    assert result.output.strip() == (f'Error: {path}: "batch_size" must be an integer >= 1 and '
                                     "<= 65536, got inf")
    assert not (tmp_path / "x.mtrace").exists()


def test_help_teaches() -> None:
    result = _run("--help")
    assert result.exit_code == 0
    for words in ("--scenario", "--steps", "--seed", "--compress / --no-compress",
                  "--list-scenarios", "byte-identical", "default: 64", "docs/synthetic.md"):
        assert words in result.output


def test_default_trace_is_what_its_documented_command_makes(tmp_path) -> None:
    """macssim/data/traces/default.md records the command that made default.mtrace; running it
    again must give the same bytes (a golden file: it changes only with the generator)."""
    from macssim._resources import DEFAULT_TRACE, TRACES_DIR

    args = ["--model", "qwen3-vl-30b-a3b", "--scenario", "serving", "--steps", "9", "--seed",
            "0"]
    doc = " ".join((TRACES_DIR / "default.md").read_text().replace("\\\n", " ").split())
    assert "macssim synth " + " ".join(args) + " --out macssim/data/traces/default.mtrace" in doc
    out = tmp_path / "default.mtrace"
    assert _run(*args, "--out", str(out)).exit_code == 0
    assert out.read_bytes() == DEFAULT_TRACE.read_bytes()


def test_synth_never_overwrites_a_file_it_did_not_write(tmp_path) -> None:
    args = ["--model", "qwen3-vl-30b-a3b", "--scenario", "chat", "--steps", "1",
            "--batch-size", "1"]
    notes = tmp_path / "notes.mtrace"
    notes.write_text("my notes")
    for extra in ([], ["--force"]):
        res = _run(*args, "--out", str(notes), *extra)
        assert res.exit_code == 1 and "not a macssim trace" in res.output
    assert notes.read_text() == "my notes"
    out = tmp_path / "t.mtrace"
    assert _run(*args, "--out", str(out)).exit_code == 0
    first = out.read_bytes()
    res = _run(*args, "--seed", "1", "--out", str(out))
    assert res.exit_code == 1 and "--force" in res.output
    assert out.read_bytes() == first
    assert _run(*args, "--seed", "1", "--out", str(out), "--force").exit_code == 0
    assert out.read_bytes() != first


def test_synth_format_and_scores_reach_the_file_and_the_estimate_is_close(tmp_path) -> None:
    """--format / --scores decide what the file keeps; the size printed before writing is
    within 35 % of the file written (it is an estimate from measured bytes per
    token-layer and the scenario's mean prompt)."""
    from macssim.trace import estimate_trace_bytes, get_model_preset, get_scenario

    cases = {"v2": ([], 16), "v2-32": (["--scores", "32"], 32), "v1": (["--format", "v1"], None)}
    for name, (extra, top_n) in cases.items():
        out = tmp_path / f"{name}.mtrace"
        result = _run("--scenario", "chartqa", "--steps", "2", "--batch-size", "2", "--out",
                      str(out), *extra)
        assert result.exit_code == 0, result.output
        trace = open_trace(out)
        assert trace.version == (1 if name == "v1" else 2)
        assert trace.scores_top_n == top_n
        version = 1 if name == "v1" else 2
        _, size = estimate_trace_bytes(get_model_preset("qwen3-vl-30b-a3b"),
                                       get_scenario("chartqa").with_overrides(batch_size=2), 2,
                                       format_version=version, top_n=top_n or "all")
        assert 0.65 < out.stat().st_size / size < 1.35, (name, out.stat().st_size, size)
        assert "writing " in result.output and "about " in result.output
    for bad, message in ((["--scores", "8"], "must exceed top_k = 8"),
                         (["--scores", "lots"], "expected 2k, all or an integer"),
                         (["--format", "v1", "--scores", "32"], "format v1 keeps every score")):
        result = _run("--scenario", "chartqa", "--steps", "1", "--out",
                      str(tmp_path / "bad.mtrace"), *bad)
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "bad.mtrace").exists()
