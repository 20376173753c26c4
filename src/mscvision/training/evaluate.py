"""Evaluation of a run's selected checkpoint: probabilities, metrics.json blocks, per-image
predictions, confusion-matrix plots and the console summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mscvision.core.calibration import apply_temperature
from mscvision.core.fileio import write_json_atomic, write_text_atomic
from mscvision.core.metrics import classification_metrics
from mscvision.core.tasks import Task
from mscvision.training.calibrate import fit_calibration
from mscvision.training.config import DecideConfig
from mscvision.training.dataset_setup import PreparedData
from mscvision.training.distributed import in_shards, is_primary
from mscvision.training.loaders import Loaders
from mscvision.training.run_files import load_classifier

if TYPE_CHECKING:
    from mscvision.training.fit import RunResult

METRICS_SCHEMA = "mscvision.metrics/1"
PASS_NAMES = {False: "plain single pass", True: "dihedral x8 TTA"}  # metrics.json "setup"
PASS_COLUMN = {False: "plain", True: "tta"}  # predictions_test*.csv "pass", file suffix


def evaluate_run(checkpoint: Path, data: PreparedData, loaders: Loaders, run_dir: Path, cuda: bool,
                 tta: bool = False, deployed_tta: bool = False,
                 decide: DecideConfig | None = None) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Metrics of the selected checkpoint (EMA weights when kept) on val and the held-out test groups.

    Plain single-pass figures sit under "val"/"test"; with ``tta`` the dihedral test-time
    augmentation figures are added under "val_tta"/"test_tta"; ``setup.deployed`` names the test
    block the exported model runs (``deployed_tta``: export.tta). With ``decide`` (calibration on)
    and a val split, the deployed pass is calibrated on val (training/calibrate.py): its blocks,
    ``predictions_test.csv`` and the returned probabilities are the calibrated ones the exported
    graph will output, ``calibration.json`` is written, and metrics.json gains "calibration" and
    "abstention". The other measured pass goes to ``predictions_test_{plain|tta}.csv``, uncalibrated.
    Returns the metrics and the test probabilities per setup ("test", "test_tta" with ``tta``, and
    "uncalibrated": the deployed pass before its temperature).
    """
    model = load_classifier(checkpoint)
    device = "cuda" if cuda else "cpu"
    sides = [side for side in ("val", "test") if loaders.loader(side) is not None]  # no val with val_fraction 0
    targets = {side: {k: v[loaders.rows(side)] for k, v in data.targets.items()} for side in sides}
    # on W processes each scores its share; every rank gets all images, in loader order (axis 1 of (views, N, C))
    views = {name: in_shards(view_log_probabilities, model, loaders.loader(side), device, tta=use_tta, item_axis=1)
             for side in sides for name, use_tta in setups(side, tta)}
    deployed = ("val_tta", "test_tta") if deployed_tta else ("val", "test")
    calibration = (fit_calibration(views[deployed[0]], targets["val"], views[deployed[1]], targets["test"], data.tasks,
                                   decide, np.asarray(data.manifest.groups)[loaders.rows("val")])
                   if decide is not None and deployed[0] in views else None)
    metrics: dict = {"schema": METRICS_SCHEMA,
                     "setup": {**{name: PASS_NAMES[use_tta] for side in sides for name, use_tta in setups(side, tta)},
                               "weights": "EMA" if model.ema_net is not None else "trained",
                               "deployed": deployed[1],
                               "calibrated": (f"{' and '.join(deployed)}: softmax(logits / T) per task, T fitted on val"
                                              if calibration else "no (temperature 1)")}}
    test_probs: dict[str, dict[str, np.ndarray]] = {}
    for side in sides:
        for name, use_tta in setups(side, tta):
            temperatures = calibration.temperatures if calibration and name in deployed else {}
            probs = {task: apply_temperature(v, temperatures.get(task, 1.0)) for task, v in views[name].items()}
            metrics[name] = metrics_for_split(probs, targets[side], data.tasks)
            if side == "test":
                test_probs[name] = probs
                if is_primary():
                    write_predictions(run_dir / predictions_file(use_tta, deployed_tta), data, loaders.rows(side),
                                      probs, PASS_COLUMN[use_tta])
        for task in data.tasks if is_primary() else ():
            plot_confusion(metrics[side][task.name], task, f"{task.name} ({side})",
                           run_dir / f"confusion_{side}_{task.name}.png")
    test_probs["uncalibrated"] = {task: apply_temperature(v, 1.0) for task, v in views[deployed[1]].items()}
    if calibration:
        metrics.update(calibration.metrics)
        if is_primary():
            write_json_atomic(run_dir / "calibration.json", calibration.settings)
    return metrics, test_probs


def setups(side: str, tta: bool) -> list[tuple[str, bool]]:
    """The metrics blocks of one side: the plain pass, and with ``tta`` the TTA pass ("test", "test_tta")."""
    return [(side, False), *([(f"{side}_tta", True)] if tta else [])]


def predictions_file(use_tta: bool, deployed_tta: bool) -> str:
    """``predictions_test.csv`` is the pass the exported model runs; the other one is named by its pass."""
    return "predictions_test.csv" if use_tta == deployed_tta else f"predictions_test_{PASS_COLUMN[use_tta]}.csv"


def write_predictions(path: Path, data: PreparedData, rows: np.ndarray, probs: dict[str, np.ndarray],
                      pass_name: str) -> None:
    """One row per test image: path, group, per task the true and predicted label and the
    probabilities, then ``pass`` (plain | tta: which evaluation pass these are)."""
    import csv
    import io

    header = ["path", "group"]
    for task in data.tasks:
        header += [f"{task.name}.true", f"{task.name}.label", *(f"{task.name}.p.{c}" for c in task.classes)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*header, "pass"])
    for j, i in enumerate(rows):
        cells = [str(Path(data.manifest.paths[i]).resolve()), data.manifest.groups[i]]
        for task in data.tasks:
            cells += [data.manifest.labels[task.column][i], task.classes[int(probs[task.name][j].argmax())],
                      *(f"{p:.6f}" for p in probs[task.name][j])]
        writer.writerow([*cells, pass_name])
    write_text_atomic(path, buf.getvalue())


def summary_lines(result: RunResult) -> list[str]:
    """The console summary of a run: every figure labelled with its pass, the deployed one marked."""
    lines = ["", f"run directory: {result.run_dir}"]
    if not result.metrics:
        return [*lines, f"stopped early; resume with: python scripts/train.py --resume {result.run_dir}"]
    deployed = result.metrics.get("setup", {}).get("deployed", "test")
    lines += [f"evaluated checkpoint: {result.checkpoint}",
              f"{'split':6} {'pass':6} {'task':18} {'bal.acc':>8} {'macroF1':>8} {'wF1':>8} {'n':>6}"]
    for name in ("val", "val_tta", "test", "test_tta"):
        side, pass_name = name.split("_")[0], "TTA x8" if name.endswith("_tta") else "plain"
        mark = "  <- the exported model" if name == deployed else ""
        for task, m in result.metrics.get(name, {}).items():
            lines.append(f"{side:6} {pass_name:6} {task:18} {m['balanced_accuracy']:8.3f} {m['macro_f1']:8.3f} "
                         f"{m['weighted_f1']:8.3f} {m['n']:6d}{mark}")
    return [*lines, f"wall time: {result.metrics['run']['seconds'] / 60:.1f} min "
                    f"(metrics: {result.run_dir / 'metrics.json'})"]


def predict_probabilities(model: torch.nn.Module, loader, device: torch.device | str = "cpu",
                          tta: bool = False) -> dict[str, np.ndarray]:
    """Softmax probabilities per task over a loader, in loader order (the mean over views with ``tta``)."""
    return {task: apply_temperature(v, 1.0) for task, v in view_log_probabilities(model, loader, device, tta).items()}


@torch.inference_mode()
def view_log_probabilities(model: torch.nn.Module, loader, device: torch.device | str = "cpu",
                           tta: bool = False) -> dict[str, np.ndarray]:
    """Log-softmax per task and view, (views, N, classes), over a loader in loader order.

    ``tta``: the 8 dihedral views (4 rotations x optional flip); cells have no preferred
    orientation, so each view is an equally valid look at the same image. An image's probability
    is the mean over its views of their softmax (``core.calibration.apply_temperature``), and
    keeping the views lets calibration fit the temperature that the graph applies per view.
    """
    model.eval().to(device)
    out: dict[str, list[np.ndarray]] = {}
    for x, _ in loader:
        x = x.to(device)
        per_view: dict[str, list[np.ndarray]] = {}
        for view in dihedral_views(x) if tta else [x]:
            _, logits = model(view)
            for task, value in logits.items():
                per_view.setdefault(task, []).append(torch.log_softmax(value.float(), dim=1).cpu().numpy())
        for task, chunks in per_view.items():
            out.setdefault(task, []).append(np.stack(chunks))
    return {task: np.concatenate(chunks, axis=1) for task, chunks in out.items()}


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    rotations = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    return rotations + [torch.flip(r, dims=(3,)) for r in rotations]


def metrics_for_split(probs: dict[str, np.ndarray], targets: dict[str, np.ndarray], tasks: list[Task]) -> dict:
    return {task.name: classification_metrics(targets[task.name], probs[task.name].argmax(axis=1), task.classes)
            for task in tasks}


def plot_confusion(figures: dict, task: Task, title: str, path: Path) -> None:
    """Row-normalised confusion matrix with counts, as PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mscvision.core.fileio import atomic_path

    cm = np.asarray(figures["confusion_matrix"], dtype=float)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 1.6 + 0.55 * len(task.classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(task.classes)), task.classes, rotation=45, ha="right")
    ax.set_yticks(range(len(task.classes)), task.classes)
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nbalanced acc {figures['balanced_accuracy']:.3f}, macro F1 {figures['macro_f1']:.3f}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
