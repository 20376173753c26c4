"""Shortcut baselines for the realism benchmark: what a model could learn *without* shape.

Two feature sets, each fed to a logistic regression evaluated on held-out donors:
  * global intensity statistics (raw and after per-image percentile scaling by core's
    ``percentile_normalize``, as the default preprocessing gives a model): mean, std, percentiles,
    16-bin histogram;
  * texture: rotation-invariant uniform local binary patterns (LBP riu2) at Ojala et al.'s three
    standard scales (P, R) = (8, 1), (16, 2), (24, 3), concatenated.
If either comes close to a CNN, the CNN may be reading brightness or texture rather than cells.
It lives with training, not in the numpy-only ``synth`` package: ``evaluate`` needs scikit-learn
(the train extra; imported inside it).
"""

from __future__ import annotations

import numpy as np

from mscvision.core.preprocess import percentile_normalize

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
LBP_SCALES = ((8, 1.0), (16, 2.0), (24, 3.0))  # (points, radius): Ojala, Pietikainen & Maenpaa 2002


def _stats(x: np.ndarray) -> np.ndarray:
    hist = np.histogram(np.clip(x, 0, 1), bins=16, range=(0, 1))[0] / x.size
    return np.concatenate([[x.mean(), x.std()], np.percentile(x, PERCENTILES), hist])


def normalise(x: np.ndarray) -> np.ndarray:
    """One (H, W) channel through the default preprocessing's scaling (1st..99.8th percentile →
    0..1, a flat channel → 0): core's function itself, so the baseline sees what a model sees."""
    return percentile_normalize(x[:, :, None], 1.0, 99.8)[:, :, 0]


def intensity_features(image: np.ndarray, full_scale: float) -> np.ndarray:
    """Global statistics of each channel, raw (as a fraction of full scale) and normalised."""
    img = image if image.ndim == 3 else image[:, :, None]
    feats = []
    for c in range(img.shape[2]):
        x = img[:, :, c].astype(np.float64)
        feats += [_stats(x / full_scale), _stats(normalise(x))]
    return np.concatenate(feats)


def _sample(img: np.ndarray, dy: float, dx: float, pad: int) -> np.ndarray:
    """Bilinear sample of the padded image shifted by (dy, dx)."""
    h, w = img.shape[0] - 2 * pad, img.shape[1] - 2 * pad
    y0, x0 = int(np.floor(dy)), int(np.floor(dx))
    fy, fx = dy - y0, dx - x0
    win = lambda oy, ox: img[pad + oy:pad + oy + h, pad + ox:pad + ox + w]  # noqa: E731
    return ((1 - fy) * (1 - fx) * win(y0, x0) + (1 - fy) * fx * win(y0, x0 + 1)
            + fy * (1 - fx) * win(y0 + 1, x0) + fy * fx * win(y0 + 1, x0 + 1))


def lbp_riu2(x: np.ndarray, radius: float, points: int = 8) -> np.ndarray:
    """Histogram (points + 2 bins) of rotation-invariant uniform LBP codes (Ojala et al. 2002)."""
    pad = int(np.ceil(radius)) + 1
    img = np.pad(x, pad, mode="reflect")
    bits = []
    for p in range(points):
        angle = 2 * np.pi * p / points
        bits.append(_sample(img, -radius * np.sin(angle), radius * np.cos(angle), pad) >= x - 1e-9)
    bits = np.stack(bits).astype(np.int8)
    transitions = np.abs(np.diff(np.concatenate([bits, bits[:1]]), axis=0)).sum(axis=0)
    code = np.where(transitions <= 2, bits.sum(axis=0), points + 1)
    return np.bincount(code.ravel(), minlength=points + 2) / code.size


def lbp_features(image: np.ndarray) -> np.ndarray:
    img = image if image.ndim == 3 else image[:, :, None]
    return np.concatenate([lbp_riu2(normalise(img[:, :, c].astype(np.float64)), r, p)
                           for c in range(img.shape[2]) for p, r in LBP_SCALES])


def evaluate(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int = 4) -> float:
    """Balanced accuracy of a logistic regression, pooled over group-k-fold held-out donors."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    predicted = np.empty_like(labels)
    for train, test in GroupKFold(n_splits=min(folds, len(set(groups)))).split(features, labels, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
        model.fit(features[train], labels[train])
        predicted[test] = model.predict(features[test])
    return float(balanced_accuracy_score(labels, predicted))
