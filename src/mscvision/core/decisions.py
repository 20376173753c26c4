"""From probabilities to a decision per task: a label, or "review" when the model is not sure enough.

Shared by training-time evaluation and the runtime (docs/architecture.md: everything after the model is one
copy). The threshold is on the top-class probability, which already includes the temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REVIEW = "review"


@dataclass(frozen=True)
class Decision:
    label: str  # the class name, or REVIEW
    index: int  # the top class, even when the decision is REVIEW
    probability: float  # of the top class
    abstained: bool


def decide(probabilities: np.ndarray, classes: tuple[str, ...] | list[str], threshold: float = 0.0) -> Decision:
    """One image's probabilities for one task → ``Decision``; below ``threshold`` it abstains.

    Non-finite probabilities raise ``ValueError``: ``argmax`` of NaN is 0 and ``nan < threshold``
    is False, so without this check garbage would come out as a confident label.
    """
    probabilities = np.asarray(probabilities)
    if not np.all(np.isfinite(probabilities)):
        raise ValueError(f"non-finite probabilities {probabilities.tolist()}: no decision can be made")
    index = int(np.argmax(probabilities))
    top = float(probabilities[index])
    if top < threshold:
        return Decision(REVIEW, index, top, True)
    return Decision(classes[index], index, top, False)
