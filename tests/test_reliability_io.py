"""Reliability of the shared plumbing: permissions that follow the umask, destinations of the wrong
type, one writer per folder (locks that name their holder and survive kill -9), folders kdistill
did not write left alone, and one-line errors from the command line."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.logging_reset import console_logging_per_test  # noqa: F401  (autouse)
from kdistill import cli
from kdistill.errors import DataError
from kdistill.io import atomic_dir, atomic_path, nonfinite_to_none, write_json, write_text_atomic
from kdistill.locks import LOCK_FILE, LockedError, output_lock, read_holder
from kdistill.outputs import claim_folder, manifest, manifest_problems, pop_overwrite

REPO = Path(__file__).resolve().parents[1]



def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_files_and_folders_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        write_json(tmp_path / "sub" / "b.json", {"a": 1})
        with atomic_path(tmp_path / "c.png") as tmp:
            tmp.write_bytes(b"png")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "inner").mkdir()
            write_text_atomic(tmp / "inner" / "d.txt", "y")
    finally:
        os.umask(old)
    for name in ("a.txt", "sub/b.json", "c.png", "folder/inner/d.txt"):
        assert _mode(tmp_path / name) == file_mode, name
    for name in ("sub", "folder", "folder/inner"):
        assert _mode(tmp_path / name) == dir_mode, name


def test_a_destination_of_the_wrong_type_is_a_data_error(tmp_path):
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(DataError, match="metrics.json: is a folder; a file is written here"):
        write_json(tmp_path / "metrics.json", {})
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(DataError, match="plain: is a file, so .* cannot be written below it"):
        write_text_atomic(tmp_path / "plain" / "x.txt", "x")
    with pytest.raises(DataError, match="plain: is a file; a folder is written here"):
        with atomic_dir(tmp_path / "plain"):
            pass
    assert (tmp_path / "plain").read_text() == "a file"


def test_json_refuses_nan_and_undefined_metrics_become_null(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        write_json(tmp_path / "m.json", {"p": float("nan")})
    assert not (tmp_path / "m.json").exists()
    import numpy as np

    write_json(tmp_path / "m.json", nonfinite_to_none({"auc": float("nan"), "x": [1.5, float("inf")],
                                                       "n": np.float32("nan"), "ok": np.float64(0.25)}))
    assert json.loads((tmp_path / "m.json").read_text()) == {"auc": None, "x": [1.5, None], "n": None, "ok": 0.25}


# ----------------------------------------------------------------------------- locks

_HOLD = """
import sys, time
from kdistill.locks import output_lock
with output_lock(sys.argv[1], "test folder"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "out"
    proc = _holder(folder)
    try:
        with pytest.raises(LockedError) as err:
            with output_lock(folder, "test folder"):
                pass
        msg = str(err.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}, since 20" in msg and "in use by another" in msg
        assert isinstance(err.value, DataError)  # printed as one line by kdistill.cli, exit status 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # kill -9 left its lock file and holder record; the kernel freed the lock itself
    assert read_holder(folder)["pid"] == proc.pid
    with caplog.at_level("WARNING", logger="kdistill.locks"):
        with output_lock(folder, "test folder"):
            assert read_holder(folder)["pid"] == os.getpid()
    assert f"taking over the lock of pid {proc.pid}" in caplog.text and "that process is gone" in caplog.text
    assert not (folder / LOCK_FILE).exists()  # released: removed


def test_the_lock_is_reentrant_in_one_process_and_released_by_the_outermost_holder(tmp_path):
    with output_lock(tmp_path, "run folder"):
        with output_lock(tmp_path, "stage folder"):
            pass
        assert (tmp_path / LOCK_FILE).is_file()  # still held by the outer block
    assert not (tmp_path / LOCK_FILE).exists()


# ----------------------------------------------------------------------------- what kdistill wrote

def test_a_foreign_folder_is_refused_and_left_unchanged_unless_overwrite(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my notes")
    with pytest.raises(DataError, match=r"mine: exists, is not empty \(notes.txt\) and is not a kdistill "
                                        r"prepared cache \(no meta.json\)"):
        claim_folder(user, "prepared cache", ("meta.json",))
    assert (user / "notes.txt").read_text() == "my notes"
    claim_folder(user, "prepared cache", ("meta.json",), overwrite=True)
    (user / "meta.json").write_text("{}")
    claim_folder(user, "prepared cache", ("meta.json",))  # now it is one
    both = tmp_path / "eval"
    both.mkdir()
    (both / LOCK_FILE).write_text("")  # bookkeeping files do not make a folder used
    claim_folder(both, "evaluation folder", (("metrics.json", "summary.md"),))
    (both / "metrics.json").write_text("{}")
    with pytest.raises(DataError, match=r"no metrics.json \+ summary.md"):
        claim_folder(both, "evaluation folder", (("metrics.json", "summary.md"),))
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="exists and is a file"):
        claim_folder(tmp_path / "file", "evaluation folder", ("summary.md",))


def test_overwrite_is_taken_out_of_the_overrides():
    overrides = ["size=32", "overwrite=true"]
    assert pop_overwrite(overrides) is True and overrides == ["size=32"]
    assert pop_overwrite(["overwrite=false"]) is False
    with pytest.raises(DataError, match="must be true or false"):
        pop_overwrite(["overwrite=3"])


def test_manifest_names_missing_truncated_and_changed_files(tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "small.json").write_text('{"a": 1}')
    (tmp_path / "big.bin").write_bytes(b"\0" * ((1 << 20) + 10))
    (tmp_path / "gone.txt").write_text("x")
    (tmp_path / "nested" / "other.txt").write_text("another stage's")
    (tmp_path / ".stage.json").write_text("{}")
    recorded = manifest(tmp_path, exclude=["nested"])
    assert set(recorded) == {"small.json", "big.bin", "gone.txt"}
    assert "sha256" in recorded["small.json"] and "mtime_ns" in recorded["big.bin"]
    assert manifest_problems(tmp_path, recorded) == []
    (tmp_path / "new.txt").write_text("added later")  # not a problem: nothing of the stage's is lost
    assert manifest_problems(tmp_path, recorded) == []
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "small.json").write_text('{"a": 2}')
    with open(tmp_path / "big.bin", "r+b") as fh:
        fh.truncate(100)
    assert sorted(manifest_problems(tmp_path, recorded)) == [
        "big.bin is 100 bytes, was 1048586", "gone.txt is missing", "small.json has other contents"]


# ----------------------------------------------------------------------------- the command line

def test_errors_print_as_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    import kdistill.data.check as check

    def permission(argv, prog):
        raise PermissionError(13, "Permission denied", "/data/root/files")

    monkeypatch.setattr(check, "main", permission)
    assert cli.main(["data", "check", "x"]) == 1
    err = capsys.readouterr().err
    assert err == "kdistill data check: error: /data/root/files: Permission denied\n"

    def multi_line(argv, prog):
        raise DataError("a.csv", "line 3:\n  bad value")

    monkeypatch.setattr(check, "main", multi_line)
    assert cli.main(["data", "check", "x"]) == 1
    assert capsys.readouterr().err == "kdistill data check: error: a.csv: line 3: bad value\n"


def test_a_non_utf8_yaml_is_a_config_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes("name: café\n".encode("latin-1"))
    assert cli.main(["run", str(bad), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kdistill run: error: {bad}: not UTF-8 text (byte 0xe9 at offset 9); save the config as UTF-8"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [["run", str(REPO / "configs" / "demo.yaml"), "student.lr=.nan"],
                                     ["student", "train", "--prepared", "p", "--tokenizer", "t", "--out", "o",
                                      "lr=.nan"]])
def test_a_nan_learning_rate_is_refused(tmp_path, capsys, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(command) == 1
    assert "lr must be a positive number, got nan" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, kind", [
    (["data", "synth", "--n", "4", "--size", "64", "--quiet"], "phantom dataset"),
    (["teacher", "pretrain", "--corpus", "CORPUS", "max_steps=1"], "teacher base folder"),
    (["teacher", "train", "--base", "BASE", "--corpus", "CORPUS", "max_steps=1"], "teacher folder"),
])
def test_writers_refuse_a_folder_of_someone_elses_files(tmp_path, command, kind, capsys):
    """data synth, teacher pretrain and teacher train onto a user's folder (a hub model's files, say):
    refused before anything is written, the files unchanged, a one-line error naming the folder."""
    from kdistill import cli

    user = tmp_path / "model"
    user.mkdir()
    files = {"config.json": '{"model_type": "llama"}', "model.safetensors": "weights", "files": None}
    for name, text in files.items():
        (user / name).mkdir() if text is None else (user / name).write_text(text)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"kind": "rationale", "text": "x"}\n')
    base = tmp_path / "base"
    base.mkdir()
    argv = [a.replace("CORPUS", str(corpus)).replace("BASE", str(base)) for a in command] + ["--out", str(user)]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code != 0 and f"{user}: exists, is not empty" in err and f"not a kdistill {kind}" in err
    assert "--overwrite" in err and "Traceback" not in err
    assert sorted(p.name for p in user.iterdir()) == sorted(files)
    assert (user / "model.safetensors").read_text() == "weights" and not any((user / "files").iterdir())
