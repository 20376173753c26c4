"""The learned OOD score inside the exported graph, and the data the station calibrates it with
(issue 16 item 2; the station's gate is runtime/gate.py, the image checks core/image_checks.py).

Features are the deployed network's own ``features`` output (``DeployNet``: the penultimate vector,
the mean over the 8 views for a TTA graph), of
- the bank: training-split images, at most ``MAX_BANK_IMAGES`` (a seeded random subset beyond it:
  the graph's MatMul and the file grow with the bank, 4096 x 512 float32 = 8 MB for a ResNet-18);
- the calibration set: the val split (groups never trained on, so their scores are what an unseen
  in-distribution image scores; training images sit closer to the bank than any new image will).
  The exported graph itself scores them; the metadata carries those scores, from which the runtime
  computes conformal p-values. The image checks (core/image_checks.py) are fitted on the bank's
  images and measured on the same calibration images. Without a val split there is nothing to
  calibrate on: no gate (``ood`` null; the model card and the export log say why).

Two scores, each a torch module that ``DeployNet`` appends, so it exports into the same one file with
its statistics as buffers (initialisers inside the file); ``core/ood_scores.py`` is their numpy
reference. Higher = more unusual.
- ``knn`` (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors"):
  1 − the k-th largest cosine similarity to the L2-normalised bank (MatMul, then TopK).
- ``mahalanobis`` (Lee et al. 2018): the smallest Mahalanobis distance to a class mean of the first
  task, one covariance shared by the classes, ridge-regularised (``RIDGE``).
- ``mahalanobis_energy`` (the default): that distance plus the energy score of the first task's
  logits (Liu et al. 2020: -logsumexp, from the graph's own linear head applied to the features),
  each standardised by its mean and standard deviation over the bank. Measured on the MitoCheck
  model with ADCCM, Folded and Grape held out (README): AUROC 0.820 on those classes against 0.766
  for the distance alone, 0.782 for the relative Mahalanobis distance (Ren et al. 2021) and 0.802
  for kNN (k = 10); the distance sees images far from every class (photographs, synthetic fields),
  the energy the ones the classifier has no class for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mscvision.core.image_checks import fit_reference, measure_image
from mscvision.core.imageio import decode_image
from mscvision.core.ood_scores import (NORM_EPS, energy_score, knn_score, l2_normalise, mahalanobis_energy_score,
                                      mahalanobis_score)
from mscvision.core.preprocess import PreprocessSpec, select_channels
from mscvision.core.tasks import IGNORE_INDEX, Task
from mscvision.export.samples import Samples, load_samples
from mscvision.runtime.metadata import INPUT_NAME, OOD_OUTPUT

MAX_BANK_IMAGES = 4096
MAX_CALIBRATION_IMAGES = 4096  # conformal p-values resolve 1 / (n + 1): more is finer, never needed beyond
SAMPLE_SEED = 2  # which images when a split is larger than its cap: reproducible
# Ridge on the shared covariance, as a fraction of its mean eigenvalue: the ReLU features of a small
# data set leave directions with (near) zero variance, whose inverse would make the distance a
# measure of float noise in those directions.
RIDGE = 0.01
NO_VAL_SPLIT = "the run has no val split (held-out groups never trained on) to calibrate one on"


class KnnScore(nn.Module):
    """features (N, D) → 1 − the k-th largest cosine similarity to the bank (B, D), shape (N,)."""

    def __init__(self, bank: np.ndarray, k: int):
        super().__init__()
        if not 1 <= k <= len(bank):
            raise ValueError(f"k={k} must be between 1 and the bank size {len(bank)}")
        self.k = k
        # stored normalised and transposed (D, B): the graph is one MatMul, no Transpose node
        self.register_buffer("bank_t", torch.from_numpy(np.ascontiguousarray(l2_normalise(bank).T)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # F.normalize's arithmetic, written out in ops whose shapes onnxruntime's symbolic shape
        # inference (run first by int8 quantisation) follows: it loses them at Expand and ReduceL2
        norm = (features * features).sum(dim=1, keepdim=True).sqrt().clamp_min(NORM_EPS)
        similarity = (features / norm) @ self.bank_t
        return 1.0 - torch.topk(similarity, self.k, dim=1).values[:, self.k - 1]

    def reference(self, features: np.ndarray) -> np.ndarray:
        return knn_score(features, self.bank_t.numpy().T, self.k)


class MahalanobisScore(nn.Module):
    """features (N, D) → min over classes of ‖f W − μ_c W‖, W Wᵀ the precision matrix, shape (N,)."""

    def __init__(self, whitening: np.ndarray, whitened_means: np.ndarray):
        super().__init__()
        self.register_buffer("whitening", torch.from_numpy(whitening.astype(np.float32)))
        self.register_buffer("whitened_means", torch.from_numpy(whitened_means.astype(np.float32)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = features @ self.whitening
        return (z.unsqueeze(1) - self.whitened_means.unsqueeze(0)).pow(2).sum(dim=2).amin(dim=1).sqrt()

    def reference(self, features: np.ndarray) -> np.ndarray:
        return mahalanobis_score(features, self.whitened_means.numpy(), self.whitening.numpy())


class MahalanobisEnergyScore(MahalanobisScore):
    """features (N, D) → the standardised Mahalanobis distance plus the standardised energy of the
    first task's logits, f Wₕᵀ + b (its linear head's weights, copied), shape (N,)."""

    def __init__(self, whitening: np.ndarray, whitened_means: np.ndarray, head_weight: np.ndarray,
                 head_bias: np.ndarray, standardise: np.ndarray):
        super().__init__(whitening, whitened_means)
        self.register_buffer("head_weight_t", torch.from_numpy(np.ascontiguousarray(head_weight.T, np.float32)))
        self.register_buffer("head_bias", torch.from_numpy(np.asarray(head_bias, np.float32)))
        self.register_buffer("standardise", torch.from_numpy(np.asarray(standardise, np.float32)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # the parent's arithmetic, with the minimum and the maximum as TopK (k = 1) and the (N, 1)
        # results summed over their one column: onnxruntime's symbolic shape inference (run by int8
        # quantisation) loses the shape of ReduceMin / ReduceMax outputs (opset 18) when later
        # arithmetic reads them, as it does here
        z = features @ self.whitening
        squared = (z.unsqueeze(1) - self.whitened_means.unsqueeze(0)).pow(2).sum(dim=2)
        distance = torch.topk(squared, 1, dim=1, largest=False).values.sum(dim=1).sqrt()
        logits = features @ self.head_weight_t + self.head_bias
        top = torch.topk(logits, 1, dim=1).values  # energy_score's arithmetic: max + log sum exp(z - max)
        energy = -(top + torch.log(torch.exp(logits - top).sum(dim=1, keepdim=True))).sum(dim=1)
        s = self.standardise
        return (distance - s[0]) / s[1] + (energy - s[2]) / s[3]

    def reference(self, features: np.ndarray) -> np.ndarray:
        return mahalanobis_energy_score(features, self.whitened_means.numpy(), self.whitening.numpy(),
                                        self.head_weight_t.numpy(), self.head_bias.numpy(), self.standardise.numpy())


@dataclass
class LearnedOod:
    """A fitted score head, what the metadata says of it, and the images to calibrate it on."""

    head: nn.Module
    settings: dict  # the metadata's ``ood.learned`` except the calibration scores
    calibration: Samples  # the val split, through the real preprocessing
    bank_paths: list[str]
    bank_bit_depths: tuple[int, ...]


def fit_learned(deploy: nn.Module, rows: list[dict], tasks: list[Task], spec: PreprocessSpec, method: str,
                k: int, log=print) -> LearnedOod | None:
    """The score head for ``method`` fitted on the run's training images; None (and a log line)
    when the run has no val split, as nothing would calibrate it (nor the image checks)."""
    if not any(r["split"] == "val" for r in rows):
        log(f"no OOD gate (neither the learned score nor the image checks): {NO_VAL_SPLIT}")
        return None
    bank = load_samples(rows, ("train",), tasks, spec, MAX_BANK_IMAGES, MAX_BANK_IMAGES, seed=SAMPLE_SEED)
    calibration = load_samples(rows, ("val",), tasks, spec, MAX_CALIBRATION_IMAGES, MAX_CALIBRATION_IMAGES,
                               seed=SAMPLE_SEED)
    features = deployed_features(deploy, bank.tensors)
    n_train = sum(r["split"] == "train" for r in rows)
    settings = {"method": method, "output": OOD_OUTPUT, "higher_is": "more unusual",
                "features": "the graph's features output" + (" (mean over the 8 dihedral views)" if deploy.tta else ""),
                "fitted_on": f"train split: {len(bank)} of {n_train} images "
                             f"({'all' if len(bank) == n_train else f'a seeded random subset, seed {SAMPLE_SEED}'}; "
                             f"at most {MAX_BANK_IMAGES}); calibration: val split, {len(calibration)} images "
                             "(groups never trained on), scored by this graph",
                "reference": f"mscvision.core.ood_scores.{method}_score"}
    head, parameters = _score_head(method, features, bank, tasks[0], k, deploy)
    settings.update(parameters)
    log(f"learned OOD score: {method} on {len(bank)} training images, calibrated on {len(calibration)} val images")
    return LearnedOod(head, settings, calibration, bank.paths, bank.bit_depths)


def _score_head(method: str, features: np.ndarray, bank: Samples, task: Task, k: int,
                deploy: nn.Module) -> tuple[nn.Module, dict]:
    """The head for ``method`` and its parameters, as the metadata states them."""
    if method == "knn":
        used_k = min(k, len(bank))
        return KnnScore(features, used_k), {
            "k": used_k, "k_configured": k, "bank_size": len(bank), "similarity": "cosine (L2-normalised features)",
            "score": "1 - the k-th largest cosine similarity to the bank (Sun et al. 2022)"}
    head, classes = mahalanobis_head(features, bank.targets[task.name], RIDGE)
    parameters = {"task": task.name, "classes": [task.classes[c] for c in classes], "ridge": RIDGE,
                  "bank_size": len(bank), "score": "min over the classes of the Mahalanobis distance, one shared "
                                                   "covariance + ridge * its mean eigenvalue (Lee et al. 2018)"}
    if method == "mahalanobis":
        return head, parameters
    linear = deploy.net.heads[task.name]
    weight, bias = linear.weight.detach().cpu().numpy().copy(), linear.bias.detach().cpu().numpy().copy()
    distance = head.reference(features).astype(np.float64)
    energy = energy_score(features.astype(np.float32) @ weight.T.astype(np.float32) + bias).astype(np.float64)
    standardise = np.array([distance.mean(), max(distance.std(), 1e-6), energy.mean(), max(energy.std(), 1e-6)])
    combined = MahalanobisEnergyScore(head.whitening.numpy(), head.whitened_means.numpy(), weight, bias, standardise)
    return combined, {**parameters, "standardise": [float(v) for v in standardise],
                      "score": "(d - mean d) / sd d + (e - mean e) / sd e: d the smallest Mahalanobis distance to a "
                               "class mean (one shared covariance + ridge * its mean eigenvalue, Lee et al. 2018), "
                               "e = -logsumexp of the task's logits (energy, Liu et al. 2020); means and sds over "
                               "the bank"}


def mahalanobis_head(features: np.ndarray, labels: np.ndarray, ridge: float) -> tuple[MahalanobisScore, list[int]]:
    """Class means and the pooled within-class covariance (float64), ridge-regularised, as the
    whitening factor of its inverse; returns the head and the class indices it has means for (images
    with an unknown label are left out)."""
    known = labels != IGNORE_INDEX
    x, y = features[known].astype(np.float64), labels[known]
    classes = sorted(int(c) for c in np.unique(y))
    if not classes:
        raise ValueError("no training image has a label for the first task: no class means to fit")
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    covariance = centred.T @ centred / max(len(x) - len(classes), 1)
    covariance += ridge * max(np.trace(covariance) / len(covariance), 1e-12) * np.eye(len(covariance))
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    whitening = eigenvectors / np.sqrt(eigenvalues)  # W Wᵀ = U diag(1/λ) Uᵀ = the precision matrix
    return MahalanobisScore(whitening, means @ whitening), classes


@torch.inference_mode()
def deployed_features(deploy: nn.Module, tensors: np.ndarray, batch: int = 64) -> np.ndarray:
    """The ``features`` output of the deploy wrapper (after the logits), float32 on the CPU."""
    deploy.eval()
    index = 2 * len(deploy.tasks)
    return np.concatenate([deploy(torch.from_numpy(tensors[i:i + batch]))[index].numpy()
                           for i in range(0, len(tensors), batch)])


def graph_scores(model_bytes: bytes, tensors: np.ndarray, threads: int = 0, batch: int = 64) -> np.ndarray:
    """``ood.score`` of a serialised graph (before its metadata is final) on ``tensors``, as the
    station's onnxruntime computes it."""
    import onnxruntime as ort

    from mscvision.runtime.station import session_options

    session = ort.InferenceSession(model_bytes, sess_options=session_options(threads),
                                   providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OOD_OUTPUT], {INPUT_NAME: tensors[i:i + batch]})[0]
                           for i in range(0, len(tensors), batch)])


def ood_metadata(learned: LearnedOod | None, alpha: float, spec: PreprocessSpec) -> dict | None:
    """The metadata's ``ood`` block (runtime/gate.py reads it), or None without a val split: then
    there are no calibration scores for either half, and no gate. ``learned.calibration_scores`` is
    filled per exported file (``with_calibration``)."""
    if learned is None:
        return None
    return {"learned": dict(learned.settings), "image_checks": image_checks_block(learned, spec), "alpha": alpha}


def with_calibration(block: dict | None, scores: np.ndarray) -> dict | None:
    """``block`` with this file's own calibration scores (its graph's scores of the val images)."""
    if block is None:
        return None
    return {**block, "learned": {**block["learned"], "calibration_scores": [float(s) for s in scores],
                                 "n_calibration": int(len(scores))}}


def image_checks_block(learned: LearnedOod, spec: PreprocessSpec) -> dict:
    """The image checks' reference, fitted on the bank's training images (the model's channels, as
    stored), and their scores of the calibration images, measured as the station measures them."""
    bank = [decode_image(path) for path in learned.bank_paths]
    reference = fit_reference([select_channels(d.array, spec, p) for d, p in zip(bank, learned.bank_paths)],
                              learned.bank_bit_depths, [d.pixel_size_um for d in bank])
    del bank  # up to MAX_BANK_IMAGES decoded images: not kept while the val images are measured
    scores: dict[str, list[float]] = {}
    for path in learned.calibration.paths:
        decoded = decode_image(path)
        for check, value in measure_image(decoded.array, spec, decoded.pixel_size_um, reference, path).items():
            # a score a calibration image cannot give (NaN: e.g. the scale profile of an image smaller
            # than its pyramid) is left out, not stored: the station flags such an image as unmeasured
            # anyway, and one NaN among the scores would make the whole gate unloadable
            if math.isfinite(value):
                scores.setdefault(check, []).append(float(value))
    return {"reference": reference, "calibration_scores": scores}
