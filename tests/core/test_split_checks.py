"""Splits that would mislead are refused, held-out figures that cannot be estimated are marked, and
the split is shown (and written) before training starts (issue 20); pooled CV skips unreadable images."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_shapes_dataset, tiny_overrides
from mscvision.core.errors import DataError
from mscvision.core.split_check import check_splits, count_split, split_table_csv
from mscvision.core.splits import stratified_group_folds, train_val_test_split
from mscvision.core.tasks import Task


def _rewrite(manifest: Path, edit) -> Path:
    """Rewrite a shapes manifest row by row: ``edit(index, row dict)`` changes the row in place."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        edit(i, row)
    columns = list(rows[0])
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _one_class_in_one_group(root: Path) -> Path:
    """Shapes, plus a third shape 'blob' whose every image comes from one group, 'lonely'."""
    def edit(i, row):
        if i % 12 == 0:
            row["shape"], row["group"] = "blob", "lonely"
    return _rewrite(make_shapes_dataset(root / "shapes", n=48, groups=8), edit)


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


# --- the refusal, through the real commands ------------------------------------------------------------

@pytest.mark.parametrize("script", ["train.py", "cross_validate.py"])
def test_a_class_living_in_one_group_is_refused_before_anything_is_written(tmp_path, script):
    pytest.importorskip("torch")
    manifest = _one_class_in_one_group(tmp_path)
    done = _script(script, *tiny_overrides(manifest, tmp_path / "runs", epochs=1),
                   *(["--folds", "3"] if script == "cross_validate.py" else []))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "class 'blob' lives in a single group" in done.stderr and "lonely (4)" in done.stderr
    assert "Fix: finer groups" in done.stderr and "tasks.shape.classes" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()  # refused before a run directory is made


def test_a_fixed_split_column_that_leaves_a_class_out_of_training_is_refused(tmp_path):
    pytest.importorskip("torch")
    manifest = make_shapes_dataset(tmp_path / "shapes", n=48, groups=8)
    # groups g0, g1 test; g2, g3 val; the rest train, except that every bar lives outside train
    sides = {"g0": "test", "g1": "test", "g2": "val", "g3": "val"}
    _rewrite(manifest, lambda i, row: row.update(
        split=sides.get(row["group"], "val" if row["shape"] == "bar" else "train")))
    done = _script("train.py", *tiny_overrides(manifest, tmp_path / "runs", epochs=1))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "task 'shape': class 'bar' has no training images" in done.stderr
    assert "single group" not in done.stderr  # bar spans 4 groups: the problem is the split column
    assert not (tmp_path / "runs").exists()


# --- marking and the split table, through one tiny run each ---------------------------------------------

def _fixed_split_with_one_test_group(root: Path) -> Path:
    """test g0 g1 g3, val g2 g5, train g4 g6 g7. Shape: disc = even groups, bar = odd; count: one =
    g0 g1 g4 g5, two = the rest. So in test disc and count 'two' rest on one group; in val all four."""
    sides = {"g0": "test", "g1": "test", "g3": "test", "g2": "val", "g5": "val"}
    manifest = make_shapes_dataset(root / "shapes", n=48, groups=8)
    return _rewrite(manifest, lambda i, row: row.update(split=sides.get(row["group"], "train")))


def _epoch_marker():
    """A callback printing a line when a training epoch starts (to order the console output)."""
    import lightning as L

    class Marker(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            print("FIRST EPOCH STARTS", flush=True)
    return Marker()


def test_a_class_on_one_test_group_is_flagged_in_metrics_json_and_on_the_console(tmp_path, capsys):
    pytest.importorskip("torch")
    from mscvision.training.config import load_config
    from mscvision.training.fit import train

    manifest = _fixed_split_with_one_test_group(tmp_path)
    result = train(load_config(None, [*tiny_overrides(manifest, tmp_path / "runs", epochs=1), "export.enabled=false"]),
                   callbacks=(_epoch_marker(),))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    disc, bar = metrics["test"]["shape"]["per_class"]["disc"], metrics["test"]["shape"]["per_class"]["bar"]
    assert disc["estimable"] is False and disc["note"] == "one group in test" and disc["groups"] == 1
    assert bar["estimable"] is True and bar["groups"] == 2 and "note" not in bar
    assert metrics["test"]["count"]["not_estimable"] == {"two": "one group in test"}
    assert metrics["val"]["shape"]["not_estimable"] == {"disc": "one group in val", "bar": "one group in val"}
    out = capsys.readouterr().out
    first_epoch = out.index("FIRST EPOCH STARTS")
    assert out.index(f"run directory: {result.run_dir}") < first_epoch
    assert out.index("split: images/groups") < first_epoch
    assert out.index("class 'disc' one group in val; one group in test") < first_epoch
    assert "note: test figures of 'shape' not estimable for 'disc' (one group in test)" in out


def test_the_split_table_counts_match_split_csv(tmp_path):
    pytest.importorskip("torch")
    from mscvision.training.config import load_config
    from mscvision.training.fit import train

    manifest = make_shapes_dataset(tmp_path / "shapes", n=48, groups=12, unknown_every=5)
    (manifest.parent / "images" / "img007.png").write_bytes(b"broken")  # excluded from both files
    result = train(load_config(None, [*tiny_overrides(manifest, tmp_path / "runs", epochs=1), "export.enabled=false",
                                      "data.skip_unreadable=true"]))
    with open(result.run_dir / "split.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] != "excluded"]
    assert len(rows) == 47
    expected = defaultdict(lambda: [0, set()])
    for r in rows:
        for task in ("shape", "count"):
            if r[task]:
                expected[task, r[task], r["split"]][0] += 1
                expected[task, r[task], r["split"]][1].add(r["group"])
        expected["*", "*", r["split"]][0] += 1
        expected["*", "*", r["split"]][1].add(r["group"])
    with open(result.run_dir / "split_table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert {(r["task"], r["class"], r["side"]): (int(r["images"]), int(r["groups"])) for r in table} == \
        {key: (n, len(groups)) for key, (n, groups) in expected.items()}
    assert {r["fold"] for r in table} == {""}


def test_cross_validation_writes_and_prints_the_fold_table_before_the_first_fold(tmp_path):
    pytest.importorskip("torch")
    manifest = make_shapes_dataset(tmp_path / "shapes", n=36, groups=9)
    done = _script("cross_validate.py", "--folds", "3", "--check-only",
                   *tiny_overrides(manifest, tmp_path / "runs", epochs=1), "data.val_fraction=0", "trainer.select=last",
                   "calibration.enabled=false")
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header[:2] == ["split:", "images/groups"] and header[2:] == ["f0", "train", "f0", "test", "f1", "train",
                                                                       "f1", "test", "f2", "train", "f2", "test"]
    assert not (tmp_path / "runs").exists()  # --check-only writes nothing


def test_pooled_cross_validation_leaves_out_images_skipped_as_unreadable(tmp_path):
    """An unreadable image has no out-of-fold prediction: it must not count as a class-0 prediction."""
    pytest.importorskip("torch")
    from mscvision.training.config import load_config
    from mscvision.training.crossval import cross_validate

    manifest = make_shapes_dataset(tmp_path / "shapes", n=36, groups=9)
    (manifest.parent / "images" / "img003.png").write_bytes(b"not an image")  # a bar, class 1 of shape
    overrides = [*tiny_overrides(manifest, tmp_path / "runs", epochs=1), "data.val_fraction=0",
                 "trainer.select=last", "data.skip_unreadable=true"]
    report = cross_validate(load_config(None, overrides), k=3)
    for task in ("shape", "count"):
        pooled = report["pooled"][task]
        assert pooled["n"] == 35
        summed = sum(np.array(f["test"][task]["confusion_matrix"]) for f in report["folds"])
        assert np.array_equal(np.array(pooled["confusion_matrix"]), summed)
    table = (Path(report["dir"]) / "split_table.csv").read_text().splitlines()
    assert table[0] == "fold,task,class,side,images,groups,note" and {r.split(",")[0] for r in table[1:]} == {"0", "1", "2"}


# --- the splitter's guarantee and the check itself (numpy only) ----------------------------------------

def _small_class_data(seed: int, n_small_groups: int):
    """30 big groups of two common classes, plus a rare class 2 in ``n_small_groups`` groups of its own."""
    rng = np.random.default_rng(seed)
    labels = list(rng.integers(0, 2, 600))
    groups = [f"big{i % 30}" for i in range(600)]
    for g in range(n_small_groups):
        size = int(rng.integers(3, 40))
        labels += [2] * size
        groups += [f"small{g}"] * size
    return np.array(labels), np.array(groups)


@pytest.mark.parametrize("n_small_groups", [2, 3, 4])
def test_the_splitter_keeps_a_class_with_two_groups_in_train_and_test(n_small_groups):
    for seed in range(25):
        labels, groups = _small_class_data(seed, n_small_groups)
        split = train_val_test_split(labels, groups, 0.15, 0.2, seed)
        sides = set(split[labels == 2])
        assert {"train", "test"} <= sides, (seed, sides)
        if n_small_groups >= 3:
            assert sides == {"train", "val", "test"}, (seed, sides)


def test_cross_validation_folds_spread_a_class_with_two_groups_over_two_folds():
    for seed in range(25):
        labels, groups = _small_class_data(seed, 2)
        folds = stratified_group_folds(labels, groups, 5, seed)
        assert len(set(folds[labels == 2])) == 2, seed  # so every fold trains on it


def _counts(split, shape, groups, fold=""):
    task = Task("shape", ("disc", "bar", "blob"), "shape")
    classes = {"disc": 0, "bar": 1, "blob": 2, "": -1}
    return count_split([task], {"shape": np.array([classes[s] for s in shape])}, np.array(groups),
                       np.array(split), fold=fold)


def test_the_check_names_every_untrained_class_with_its_groups_and_the_folds():
    shape = ["disc", "disc", "bar", "bar", "blob", "blob"]
    groups = ["a", "b", "c", "d", "e", "f"]
    fold0 = _counts(["train", "test", "train", "test", "test", "test"], shape, groups, "0")
    fold1 = _counts(["test", "train", "test", "train", "train", "train"], shape, groups, "1")
    with pytest.raises(DataError) as error:
        check_splits([fold0, fold1], computed=True)
    message = str(error.value)
    assert "class 'blob' has no training images in fold(s) 0 (2 images in 2 group(s): e (1), f (1))" in message
    assert "'disc'" not in message and "'bar'" not in message


def test_a_class_with_no_images_at_all_is_refused():
    counts = _counts(["train", "test", "train", "test"], ["disc", "disc", "bar", "bar"], ["a", "b", "c", "d"])
    with pytest.raises(DataError, match="class 'blob' has no images at all"):
        check_splits([counts], computed=False)


def test_a_fixed_split_may_keep_a_one_group_class_in_train_with_a_warning():
    shape, groups = ["disc", "disc", "bar", "bar", "blob", ""], ["a", "b", "c", "d", "e", "f"]
    split = ["train", "test", "train", "test", "train", "test"]
    with pytest.raises(DataError, match="lives in a single group"):
        check_splits([_counts(split, shape, groups)], computed=True)
    warnings = check_splits([_counts(split, shape, groups)], computed=False)
    assert len(warnings) == 3 and "class 'blob' absent from test" in warnings[2]
    assert "class 'disc' one group in test" in warnings[0]


def test_the_table_file_marks_what_the_warnings_say():
    shape, groups = ["disc", "disc", "disc", "bar", "bar", "blob", "blob"], list("abcdefg")
    counts = _counts(["train", "test", "test", "train", "test", "train", "train"], shape, groups)
    rows = {(r[1], r[2], r[3]): r for r in csv.reader(split_table_csv([counts]).splitlines())}
    assert rows["shape", "disc", "test"][4:] == ["2", "2", ""]
    assert rows["shape", "bar", "test"][4:] == ["1", "1", "one group in test"]
    assert rows["shape", "blob", "test"][4:] == ["0", "0", "absent from test"]
    assert rows["*", "*", "train"][4:] == ["4", "4", ""]


def test_a_held_out_class_dominated_by_one_group_rests_on_it():
    shape = ["disc"] * 12 + ["bar"] * 4 + ["blob"] * 4
    groups = ["a"] * 10 + ["b", "c"] + ["d", "e", "f", "g"] + ["h", "i", "j", "k"]
    split = ["test"] * 11 + ["train"] + ["train", "train", "test", "test"] * 2
    counts = _counts(split, shape, groups)
    warnings = check_splits([counts], computed=True)
    assert any("class 'disc' one group holds 10 of 11 in test" in w for w in warnings)
    assert not any("'bar'" in w or "'blob'" in w for w in warnings)  # 2 test groups of 1 image: estimable
    assert "class 'disc' trains on few of its 12 images (1)" in warnings[-1]  # 1 of 12: under a third


def test_a_side_whose_every_image_was_skipped_keeps_empty_cells():
    # Every test image unreadable (rows 1 and 3 left out): the test side is absent, not a KeyError.
    shape, groups = ["disc", "disc", "bar", "bar"], ["a", "b", "c", "d"]
    task = Task("shape", ("disc", "bar"), "shape")
    counts = count_split([task], {"shape": np.array([0, 0, 1, 1])}, np.array(groups),
                         np.array(["train", "test", "train", "test"]), rows=np.array([0, 2]))
    assert counts.sides == ("train", "test") and counts.cells["shape"]["disc"]["test"].images == 0
    warnings = check_splits([counts], computed=False)
    assert any("class 'disc' absent from test" in w for w in warnings)
    # and every training image lost: the refusal, not a KeyError
    lost_train = count_split([task], {"shape": np.array([0, 0, 1, 1])}, np.array(groups),
                             np.array(["train", "test", "train", "test"]), rows=np.array([1, 3]))
    with pytest.raises(DataError, match="class 'disc' has no training images"):
        check_splits([lost_train], computed=False)
