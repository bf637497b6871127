"""MACS's expert labels come from the calibration trace when one is given, else from
the replayed trace (in-sample), and the terminal says which."""

from __future__ import annotations

import shutil

from click.testing import CliRunner

from macssim.cli import main
from macssim.replay import ReplayConfig, replay


def _spy(monkeypatch):
    import macssim.replay._run as run

    seen = []
    real = run.expert_labels_from_trace

    def spy(trace, *a, **kw):
        seen.append(trace.path)
        return real(trace, *a, **kw)

    monkeypatch.setattr(run, "expert_labels_from_trace", spy)
    return seen


def test_labels_come_from_the_calibration_trace_when_given(small_trace, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    held_out = tmp_path / "held_out.mtrace"
    shutil.copy(small_trace, held_out)
    replay(ReplayConfig(trace=small_trace, policies=("macs",), topology="8xH100",
                        max_steps=1, calibration_trace=held_out))
    assert [str(p) for p in seen] == [str(held_out)]


def test_in_sample_by_default_and_the_terminal_says_so(small_trace, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    res = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--policy", "macs",
                                    "--steps", "1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert [str(p) for p in seen] == [str(small_trace)]
    assert "calibrated on the replayed trace itself (in-sample" in res.output
    assert "δ = 1 for every policy" in res.output
