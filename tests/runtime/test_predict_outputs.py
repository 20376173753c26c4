"""The output side of `mscvision predict` (issue 13 items 1-4, 8): no label from non-finite model
outputs, a failing batch or a stop never loses the run's rows, `--out` refused before any work when
it would destroy something, locked against a second run, CSV/JSONL safe to open.

Station-side: runs in the bare station install on the committed fixture model.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mscvision.cli import main
from mscvision.core.decisions import decide
from mscvision.runtime import inputs, predict
from runtime_fixtures import FIXTURE, images, model  # noqa: F401 (fixtures)


def _paths(images: Path) -> list[str]:
    return sorted(str(p) for p in images.glob("*.png"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _predict(*args: str) -> int:
    return main(["predict", "--threads", "1", str(FIXTURE), *args])


class FakeModel:
    """The real model, with its outputs or its failures replaced per call (``hook(call, probs)``)."""

    def __init__(self, real, hook):
        self.metadata, self._real, self._hook, self.calls = real.metadata, real, hook, 0

    def predict(self, batch):
        self.calls += 1
        return self._hook(self.calls, self._real.predict(batch))


# ---- item 1: non-finite model outputs -----------------------------------------------------------

def test_decide_refuses_non_finite_probabilities():
    for bad in ([np.nan, 0.5], [np.inf, 0.0], [np.nan, np.nan]):
        with pytest.raises(ValueError, match="non-finite"):
            decide(np.array(bad), ("a", "b"), 0.6)


def test_nan_in_model_output_is_an_error_row_without_label(model, images):
    def poison(call, probs):
        probs["count"][1, 0] = np.nan  # one image, one task: argmax would still say "one"
        return probs

    rows = list(predict.predict_files(FakeModel(model, poison), _paths(images), batch_size=6, workers=1))
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "ok", "ok", "ok"]
    bad = rows[1]
    assert "not finite" in bad["reason"] and "count" in bad["reason"]
    assert bad["shape.label"] == "" and bad["count.label"] == "" and bad["count.p.one"] == ""
    assert all(np.isfinite(r["count.p.one"]) for r in rows if r["status"] == "ok")


# ---- item 2: one failing batch, a stop, a crash ---------------------------------------------------

def test_a_batch_the_model_fails_on_becomes_error_rows_and_the_run_goes_on(model, images):
    def fail_second(call, probs):
        if call == 2:
            raise RuntimeError("CUDA out of memory")
        if call == 3:  # a broken graph: fewer output rows than images
            return {task: p[:1] for task, p in probs.items()}
        return probs

    rows = list(predict.predict_files(FakeModel(model, fail_second), _paths(images) * 2, batch_size=2, workers=1))
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error", "error", "error", "ok", "ok"] + ["ok"] * 4
    assert all("RuntimeError: CUDA out of memory" in r["reason"] for r in rows[2:4])
    assert all("1 shape output row(s) for 2 image(s)" in r["reason"] for r in rows[4:6])
    assert rows[2]["path"] == _paths(images)[2]


def test_a_crash_mid_run_keeps_the_rows_so_far_under_a_partial_name(model, images, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    out.write_text("previous run\n")

    def rows():
        yield from predict.predict_files(model, _paths(images)[:2], workers=1)
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        predict.write_rows(rows(), predict.prediction_columns(model.metadata), out, predict.Tally())
    assert out.read_text() == "previous run\n"
    partial, = tmp_path.glob(f".pred.csv.partial-{os.getpid()}*.csv")
    assert len(_rows(partial)) == 2 and str(partial) in capsys.readouterr().err


SLOW_PREDICT = textwrap.dedent("""
    import sys, time
    from mscvision.runtime import model
    real = model.Model.predict
    def slow(self, batch):
        time.sleep(0.1)  # a long run, so that the test can stop it half way
        return real(self, batch)
    model.Model.predict = slow
    from mscvision.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _start_slow_run(images: Path, tmp_path: Path, out: Path) -> subprocess.Popen:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        shutil.copy(_paths(images)[i % 6], folder / f"img{i:03d}.png")
    return subprocess.Popen([sys.executable, "-c", SLOW_PREDICT, "predict", str(FIXTURE), str(folder),
                             "--out", str(out), "--batch-size", "1", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(process: subprocess.Popen, folder: Path, rows: int = 2) -> Path:
    """The partial file once it holds ``rows`` rows (it is flushed row by row)."""
    for _ in range(600):
        for candidate in folder.glob(".pred.csv.*"):
            if not candidate.name.endswith(".lock") and candidate.read_text().count("\n") > rows:
                return candidate
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.kill()
    raise AssertionError("no rows were streamed into a partial file")


def test_sigterm_removes_the_partial_file_and_leaves_out_as_it_was(images, tmp_path):
    out = tmp_path / "pred.csv"
    out.write_text("previous run\n")
    process = _start_slow_run(images, tmp_path, out)
    _wait_for_rows(process, tmp_path)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "nothing written" in err
    assert out.read_text() == "previous run\n"
    assert not list(tmp_path.glob(".pred*"))  # neither partial file nor lock file left


def test_after_sigkill_the_partial_file_is_clearly_named_and_holds_the_rows(images, tmp_path):
    out = tmp_path / "pred.csv"
    process = _start_slow_run(images, tmp_path, out)
    partial = _wait_for_rows(process, tmp_path, rows=3)
    process.kill()
    process.communicate(timeout=60)
    assert partial.name == f".pred.csv.partial-{process.pid}.csv" and partial.exists()
    rows = _rows(partial)
    assert len(rows) >= 3 and rows[0]["status"] == "ok"
    assert not out.exists()


# ---- item 3: --out checked before any work, mode kept, locked ------------------------------------

def test_out_that_would_destroy_something_is_refused_before_any_work(images, tmp_path, capsys):
    image = _paths(images)[0]
    model_copy = tmp_path / "model.onnx"
    shutil.copy(FIXTURE, model_copy)
    before = model_copy.read_bytes(), Path(image).read_bytes()
    fifo, link, shared = tmp_path / "pipe.csv", tmp_path / "link.csv", tmp_path / "shared.csv"
    os.mkfifo(fifo)  # a non-regular file (like /dev/null, which a test run as root must never risk)
    shared.write_text("someone else's file\n")
    link.symlink_to(shared)  # like /dev/stdout -> /proc/self/fd/1
    same_as_input = tmp_path / "input.csv"
    os.link(image, same_as_input)  # the input under an output's name (a .png --out is refused by its suffix)
    cases = [(tmp_path, "is a folder"), (model_copy, "is the model file"), (same_as_input, "is also an input"),
             (fifo, "not a regular file"), (link, "is a symbolic link"),
             (tmp_path / "missing" / "p.csv", "does not exist")]
    for out, message in cases:
        code = main(["predict", str(model_copy), image, "--out", str(out), "--threads", "1"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and f"--out {out}" in err, (out, err)
        assert "sha256" not in err  # refused before the model was loaded
    assert (model_copy.read_bytes(), Path(image).read_bytes()) == before
    assert not (tmp_path / "missing").exists() and link.is_symlink() and fifo.is_fifo()


def test_replaced_output_keeps_its_mode(images, tmp_path):
    out = tmp_path / "pred.csv"
    out.write_text("old\n")
    out.chmod(0o640)
    assert _predict(_paths(images)[0], "--out", str(out)) == 0
    assert out.stat().st_mode & 0o777 == 0o640 and _rows(out)[0]["status"] == "ok"


def test_a_second_run_on_the_same_out_is_refused(images, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    out.write_text("the other run's results\n")
    with open(tmp_path / ".pred.csv.lock", "w") as held:  # what the other run holds while it writes
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _predict(_paths(images)[0], "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "held by another process (pid 4242)" in err and f"--out {out}" in err
    assert out.read_text() == "the other run's results\n"
    assert _predict(_paths(images)[0], "--out", str(out)) == 0  # free again once released


def test_two_real_runs_on_one_out_the_second_is_refused(images, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    first = _start_slow_run(images, tmp_path, out)
    _wait_for_rows(first, tmp_path)
    assert _predict(_paths(images)[0], "--out", str(out)) == 2
    assert f"pid {first.pid}" in capsys.readouterr().err
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert len(_rows(out)) == 40  # the first run's results, whole


# ---- item 4: CSV formula injection, valid UTF-8, strict JSON --------------------------------------

def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(images, tmp_path, monkeypatch):
    folder = tmp_path / "hostile"
    folder.mkdir()
    names = ["=cmd.png", "+1.png", "-x.png", "@a.png"]
    for name in names:
        shutil.copy(_paths(images)[0], folder / name)
    monkeypatch.chdir(folder)  # the names as given, so that each path cell begins with its risky character
    assert _predict("--out", str(tmp_path / "pred.csv"), "--", *names) == 0
    rows = _rows(tmp_path / "pred.csv")
    assert sorted(r["path"] for r in rows) == sorted("'" + n for n in names)
    assert all(0 <= float(r["shape.p.bar"]) <= 1 for r in rows)  # numbers untouched
    assert _predict("--out", str(tmp_path / "pred.jsonl"), "--", *names) == 0
    records = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(names)  # JSON is not a spreadsheet: unchanged
    assert [predict.csv_cell(v) for v in ("\tx", "\rx", "a=b", 0.25)] == ["'\tx", "'\rx", "a=b", 0.25]


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def test_undecodable_file_name_gives_valid_utf8_and_strict_json(images, tmp_path):
    """A name that is not UTF-8 is an error row (an audit record must name a file that can be found
    again); its row, like every row, is valid UTF-8 and strict JSON."""
    folder = tmp_path / "latin1"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # a Latin-1 name: not UTF-8
    with open(raw, "wb") as f:
        f.write(Path(_paths(images)[0]).read_bytes())
    for suffix in (".csv", ".jsonl"):
        out = tmp_path / f"pred{suffix}"
        assert _predict(str(folder), "--out", str(out)) == 3
        text = out.read_bytes().decode("utf-8")  # strict: raises on invalid UTF-8
        assert "\\udc" not in text  # no escaped lone surrogate either
    assert _rows(tmp_path / "pred.csv")[0]["path"].endswith("caf\\xe9.png")
    for line in (tmp_path / "pred.jsonl").read_text().splitlines():
        record = json.loads(line, parse_constant=_reject_constant)
        assert record["status"] == "error" and record["path"].endswith("caf\\xe9.png") and "UTF-8" in record["reason"]


def test_jsonl_refuses_nan_by_construction(model):
    row = predict.error_row("a.png", "x", model.metadata)
    row["shape.p.bar"] = float("nan")
    with pytest.raises(ValueError):
        predict.json_line(row, predict.prediction_columns(model.metadata))


# ---- input-side results on the output: problems, ignored counts, notes, doubts, budget ------------

def test_collect_problems_become_error_rows_and_ignored_files_a_warning(images, tmp_path, monkeypatch, capsys):
    good = _paths(images)[0]
    collected = SimpleNamespace(paths=[good], problems=[(str(tmp_path / "locked"), "folder cannot be listed")],
                                ignored={"AppleDouble ._* file(s)": 2})
    monkeypatch.setattr(inputs, "collect_inputs", lambda items, recursive=False: collected)
    out = tmp_path / "pred.csv"
    assert _predict(good, "--out", str(out)) == 3
    rows = {r["path"]: r for r in _rows(out)}
    assert rows[str(tmp_path / "locked")]["status"] == "error"
    assert rows[str(tmp_path / "locked")]["reason"] == "folder cannot be listed"
    assert rows[good]["status"] == "ok"
    assert "warning: ignored 2 AppleDouble ._* file(s)" in capsys.readouterr().err


def test_doubts_give_review_without_label_and_notes_their_column(images, tmp_path, monkeypatch):
    real, budgets = predict.prepare_input, []

    def prepare(path, metadata, budget=None, max_pixels=None):
        budgets.append(budget)
        tensor = real(path, metadata, budget, max_pixels).tensor
        return predict.PreparedInput(tensor, notes=("alpha dropped",), doubts=("near-constant image",))

    monkeypatch.setattr(predict, "prepare_input", prepare)
    out = tmp_path / "pred.csv"
    assert _predict(*_paths(images)[:3], "--out", str(out), "--max-pixels", "100000") == 0
    rows = _rows(out)
    assert {r["status"] for r in rows} == {"review"} and {r["shape.label"] for r in rows} == {"review"}
    assert all("near-constant image" in r["reason"] and r["notes"] == "alpha dropped" for r in rows)
    assert all(0 <= float(r["shape.p.bar"]) <= 1 for r in rows)  # probabilities still written
    assert len(budgets) == 3 and budgets[0] is not None and all(b is budgets[0] for b in budgets)


# ---- item 8: light --help ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"]])
def test_help_imports_no_numpy(argv):
    code = textwrap.dedent(f"""
        import sys
        from mscvision.cli import main
        try:
            main({argv!r})
        except SystemExit:
            pass
        assert "numpy" not in sys.modules, "numpy imported"
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: mscvision" in result.stdout


def test_expect_sha256_refuses_another_model_file(images, tmp_path, capsys):
    from mscvision.core.fileio import sha256_file

    out = tmp_path / "pred.csv"
    assert _predict(_paths(images)[0], "--out", str(out), "--expect-sha256", "0" * 64) == 2
    assert not out.exists()
    assert _predict(_paths(images)[0], "--out", str(out), "--expect-sha256", sha256_file(FIXTURE).upper()) == 0
