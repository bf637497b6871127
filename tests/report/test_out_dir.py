"""``--out`` never deletes or overwrites what macssim did not write.

Each test sets up a directory as a user would have it, runs a write, and compares every
file's bytes afterwards with what was there before (an independent snapshot, not the
writer's own bookkeeping)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from macssim.cli import main
from macssim.replay import ReplayConfig, replay
from macssim.report import MANIFEST, ReportError, write_report


def snapshot(root) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) with its bytes."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def result(small_trace):
    return replay(ReplayConfig(trace=small_trace, policies=("token-drop",),
                               topology="8xH100", max_steps=1))


@pytest.fixture
def notes(tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "plan.txt").write_text("my cluster plan\n")
    (folder / ".hidden").write_bytes(b"\x00\x01")
    (folder / "sub" / "summary.csv").write_text("not yours\n")
    return folder


def test_a_folder_of_unrelated_files_is_refused_and_left_in_place(result, notes):
    before = snapshot(notes.parent)
    with pytest.raises(ReportError, match="not a macssim report"):
        write_report(result, notes, command_line=[])
    assert snapshot(notes.parent) == before


def test_cli_refuses_the_folder_and_the_current_directory(small_trace, notes, monkeypatch):
    before = snapshot(notes.parent)
    args = ["replay", "--trace", str(small_trace), "--policy", "token-drop", "--steps", "1"]
    res = CliRunner().invoke(main, [*args, "--out", str(notes)])
    assert res.exit_code == 1 and str(notes) in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, [*args, "--out", str(notes), "--force"])
    assert res.exit_code == 1, "--force replaces only an earlier report"
    monkeypatch.chdir(notes)
    res = CliRunner().invoke(main, [*args, "--out", "."])
    assert res.exit_code == 1
    assert snapshot(notes.parent) == before


def test_a_file_at_out_is_refused(result, tmp_path):
    target = tmp_path / "report"
    target.write_text("a file")
    with pytest.raises(ReportError, match="not a directory"):
        write_report(result, target, command_line=[])
    assert target.read_text() == "a file"


def test_an_earlier_report_is_kept_and_the_new_one_goes_beside_it(result, tmp_path):
    first = write_report(result, tmp_path / "rep", command_line=[])
    before = snapshot(first.directory)
    second = write_report(result, tmp_path / "rep", command_line=[])
    assert second.directory == tmp_path / "rep-2"
    assert snapshot(first.directory) == before
    third = write_report(result, tmp_path / "rep", command_line=[])
    assert third.directory == tmp_path / "rep-3"


def test_force_replaces_an_earlier_report_but_not_files_added_to_it(result, tmp_path):
    write_report(result, tmp_path / "rep", command_line=[])
    (tmp_path / "rep" / "summary.csv").write_text("stale")
    again = write_report(result, tmp_path / "rep", command_line=[], force=True)
    assert again.directory == tmp_path / "rep"
    assert (tmp_path / "rep" / "summary.csv").read_text() != "stale"
    assert sorted(os.listdir(tmp_path)) == ["rep"], "no temporary or old copy is left"
    (tmp_path / "rep" / "my-notes.md").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(ReportError, match="my-notes.md"):
        write_report(result, tmp_path / "rep", command_line=[], force=True)
    assert snapshot(tmp_path) == before


def test_an_empty_directory_becomes_the_report(result, tmp_path):
    (tmp_path / "empty").mkdir()
    report = write_report(result, tmp_path / "empty", command_line=[])
    assert report.directory == tmp_path / "empty"
    assert set(os.listdir(tmp_path / "empty")) == {*report.files, MANIFEST}


def test_a_failed_run_writes_nothing(small_trace, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: 1\n")
    before = snapshot(tmp_path)
    res = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--steps", "1",
                                    "--topology", str(bad), "--out",
                                    str(tmp_path / "deep" / "rep")])
    assert res.exit_code == 1 and str(bad) in res.output
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "deep").exists()


def test_temporaries_of_killed_runs_are_removed_by_the_next_run(result, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".rep.macssim-tmp-{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "phases.csv").write_text("half")
    live = tmp_path / f".rep.macssim-tmp-{os.getpid()}-xyz"  # a run still going
    live.mkdir()
    write_report(result, tmp_path / "rep", command_line=[])
    assert not stale.exists()
    assert live.exists()
