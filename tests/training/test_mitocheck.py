"""Real microscopy: a brief training run on the shared MitoCheck crops (slow; skipped when absent)."""

import pytest

from conftest import MITOCHECK, REPO

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (MITOCHECK / "manifest.csv").is_file(),
                    reason=f"MitoCheck data not found at {MITOCHECK} (it lives in ../shared beside the repo)")
def test_brief_training_on_mitocheck_beats_chance(tmp_path):
    from mscvision.training.config import load_config
    from mscvision.training.fit import train

    cfg = load_config([REPO / "configs" / "mitocheck.yaml"], [
        f"data.path={MITOCHECK / 'manifest.csv'}", f"output_dir={tmp_path}", "trainer.max_epochs=2",
        "trainer.progress_bar=false", "trainer.tta=false", "export.tta=false",
        "model.stem_stride=4"])
    result = train(cfg)
    test = result.metrics["test"]["phenotype"]
    assert len(test["per_class"]) == 16
    assert test["n"] > 300
    assert test["balanced_accuracy"] > 3 / 16  # chance is 1/16 per class
    import csv

    sides = {}
    with open(result.run_dir / "split.csv", newline="") as f:
        for row in csv.DictReader(f):
            sides.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())
