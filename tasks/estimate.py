"""A classifier's accuracy (and a binary one's ROC AUC) estimated from its own probabilities, before labels arrive.

Confidence-based performance estimation (CBPE, as NannyML names it): if the model's probabilities
were calibrated, the chance that a row's predicted label is right *is* the probability of that
label, so the expected accuracy of a window is the mean of those probabilities, and the expected
confusion matrix at every threshold — hence the ROC curve — follows from them too. Probabilities
are calibrated at training time on the holdout (isotonic regression of the positive class's
probability on the label for a binary model, of the top probability on correctness for a
multiclass one) and the calibration is stored with the model's reference as a piecewise-linear map.

The estimate holds as long as the model's probabilities stay calibrated — under covariate shift
(the inputs move, the relation between inputs and label does not), which is what most drift is. A
change of concept (the same inputs now mean another label) is invisible to it: delayed labels judge that.
Nor can one calibration map fix a model that is wrong about its uncertainty in *some* regions only (a
linear model on clustered classes): measured on such a model, a window from one region was estimated
at 0.85 while 0.78 was realised, outside the band. ``tests/unit/test_estimate.py`` shows it tracking
within the band where the model family fits the data.

Band: the realised accuracy of ``n`` rows is a mean of Bernoulli draws with the estimated chances ``q``,
so it scatters around the estimate with variance ``v / n`` (``v`` the mean of ``q (1 - q)``); the
calibration itself was learnt from ``h`` holdout rows, which moves the whole estimate by about
``v / h`` more. The band is three standard deviations of both (NannyML's 3 sigma) on either side.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BAND_SIGMAS = 3.0


@dataclass(frozen=True)
class Calibration:
    """A monotone map from the model's score to a calibrated chance, fitted on the holdout.

    Attributes:
        classes: The class labels, in the order of the probability columns.
        score_points, chance_points: The map's knots (``np.interp`` between them, clipped at the ends).
        holdout_rows: Rows it was fitted on.
    """

    classes: tuple[str, ...]
    score_points: list[float]
    chance_points: list[float]
    holdout_rows: int

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @classmethod
    def fit(cls, classes: list[Any], probabilities: np.ndarray, truth: Any) -> Calibration:
        """Isotonic calibration on the holdout's probabilities (columns in ``classes`` order) and true labels."""
        from sklearn.isotonic import IsotonicRegression

        names = [str(label) for label in classes]
        probabilities = np.asarray(probabilities, dtype=float)
        truth = np.asarray([str(label) for label in truth], dtype=object)
        if len(names) == 2:
            score, outcome = probabilities[:, 1], truth == names[1]
        else:
            score = probabilities.max(axis=1)
            outcome = np.asarray(names, dtype=object)[probabilities.argmax(axis=1)] == truth
        isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, outcome.astype(float))
        return cls(
            tuple(names),
            np.asarray(isotonic.X_thresholds_, dtype=float).tolist(),
            np.asarray(isotonic.y_thresholds_, dtype=float).tolist(),
            len(truth),
        )

    def chance(self, score: np.ndarray) -> np.ndarray:
        return np.interp(score, self.score_points, self.chance_points)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        raw = json.loads(text)
        return cls(tuple(raw["classes"]), raw["score_points"], raw["chance_points"], int(raw["holdout_rows"]))


@dataclass(frozen=True)
class Estimate:
    """Estimated accuracy of a window with its band, and (binary models) estimated ROC AUC."""

    rows: int
    accuracy: float
    lower: float
    upper: float
    roc_auc: float | None

    def payload(self) -> dict[str, Any]:
        return {
            "estimated_rows": self.rows,
            "estimated_accuracy": round(self.accuracy, 4),
            "estimated_accuracy_lower": round(self.lower, 4),
            "estimated_accuracy_upper": round(self.upper, 4),
            **({"estimated_roc_auc": round(self.roc_auc, 4)} if self.roc_auc is not None else {}),
        }


def estimate(calibration: Calibration, probabilities: np.ndarray, predicted: Any) -> Estimate:
    """The expected accuracy (and binary ROC AUC) of rows the model scored, from its probabilities alone.

    Args:
        probabilities: One row per scored row, columns in ``calibration.classes`` order.
        predicted: The labels the model answered for those rows.

    Raises:
        ValueError: No rows, or probabilities of another number of classes.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(calibration.classes):
        raise ValueError(
            f"probabilities have shape {probabilities.shape}; the calibration has {len(calibration.classes)} classes"
        )
    if not len(probabilities):
        raise ValueError("no scored rows to estimate performance on")
    labels = np.asarray([str(label) for label in predicted], dtype=object)
    roc_auc = None
    if calibration.binary:
        positive = calibration.chance(probabilities[:, 1])
        right = np.where(labels == calibration.classes[1], positive, 1 - positive)
        roc_auc = _expected_roc_auc(probabilities[:, 1], positive)
    else:
        right = calibration.chance(probabilities.max(axis=1))
    n = len(right)
    accuracy = float(right.mean())
    variance = float(np.mean(right * (1 - right)))
    spread = BAND_SIGMAS * float(np.sqrt(variance / n + variance / calibration.holdout_rows))
    return Estimate(n, accuracy, max(0.0, accuracy - spread), min(1.0, accuracy + spread), roc_auc)


def _expected_roc_auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of expected true and false positives at every score threshold."""
    order = np.argsort(-score, kind="stable")
    score, positive = score[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    tp = np.r_[0.0, np.cumsum(positive)[last_of_tie]]
    fp = np.r_[0.0, np.cumsum(1 - positive)[last_of_tie]]
    if tp[-1] <= 0 or fp[-1] <= 0:
        return None
    return float(np.trapezoid(tp / tp[-1], fp / fp[-1]))
