"""Metrics and plots by task: what a candidate is scored, compared and shown with.

Regression: RMSE, MAE, R². Classification: ROC AUC (one-vs-rest for several classes), log loss,
accuracy and macro F1, plus a confusion matrix and a calibration plot as run artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.inspection import permutation_importance
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from mlops.spec import ModelSpec, Task
from tasks.reference import Outputs

SCORING = {Task.REGRESSION: "neg_root_mean_squared_error", Task.BINARY: "roc_auc", Task.MULTICLASS: "roc_auc_ovr"}


def cv_scoring(task: Task) -> str:
    """The grid search's scorer (higher is better), matching the default primary metric."""
    return SCORING[task]


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    return {
        "rmse": float(np.sqrt(mean_squared_error(y_true, y_pred))),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
    }


def classification_metrics(y_true: Any, labels: Any, probabilities: np.ndarray, classes: list[Any]) -> dict[str, float]:
    """Accuracy and macro F1 of the labels; ROC AUC and log loss of the probabilities (columns in ``classes`` order).

    ROC AUC is NaN when the rows hold a single class (it is undefined there).
    """
    truth = np.asarray(y_true)
    present = set(truth.tolist())
    if len(present) < 2:
        auc = float("nan")
    elif len(classes) == 2:
        auc = float(roc_auc_score(truth == classes[1], probabilities[:, 1]))
    else:
        kept = [index for index, label in enumerate(classes) if label in present]
        scores = probabilities[:, kept] / np.clip(probabilities[:, kept].sum(axis=1, keepdims=True), 1e-12, None)
        auc = float(roc_auc_score(truth, scores, multi_class="ovr", labels=[classes[i] for i in kept]))
    return {
        "roc_auc": auc,
        "log_loss": float(log_loss(truth, np.clip(probabilities, 1e-15, 1), labels=classes)),
        "accuracy": float(accuracy_score(truth, labels)),
        "f1_macro": float(f1_score(truth, labels, average="macro", labels=classes, zero_division=0)),
    }


def holdout_metrics(task: Task, model: Any, x: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """The task's metrics of a fitted model on ``x``/``y``."""
    if not task.is_classification:
        return regression_metrics(y, model.predict(x))
    return classification_metrics(y, model.predict(x), model.predict_proba(x), list(model.classes_))


def model_outputs(task: Task, model: Any, x: pd.DataFrame) -> Outputs:
    """What the model answers for ``x``, to profile: the prediction, or a classifier's labels and probabilities."""
    if not task.is_classification:
        return Outputs(np.asarray(model.predict(x), dtype=np.float64))
    probabilities = np.asarray(model.predict_proba(x), dtype=np.float64)
    return Outputs(model.predict(x), probabilities, tuple(model.classes_.tolist()))


@dataclass(frozen=True)
class RunArtifacts:
    """Where plots go: an MLflow run, open or finished (artifacts are added without touching its status)."""

    tracker: MlflowClient
    run_id: str

    def figure(self, figure: Any, path: str) -> None:
        self.tracker.log_figure(self.run_id, figure, path)

    def json(self, value: Any, path: str) -> None:
        self.tracker.log_dict(self.run_id, value, path)


def _figure(width: float = 6, height: float = 4) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def log_importance(run: RunArtifacts, spec: ModelSpec, model: Any, x: pd.DataFrame, y: pd.Series) -> None:
    """Permutation importance on the holdout by the task's scorer (PNG + JSON) into ``run``."""
    scoring = cv_scoring(spec.task)
    result = permutation_importance(model, x, y, n_repeats=5, random_state=spec.training.seed, scoring=scoring)
    names = list(x.columns)
    means, stds = result.importances_mean, result.importances_std
    order = np.argsort(means)
    figure, axes = _figure()
    axes.barh([names[i] for i in order], means[order], xerr=stds[order], color="#4c72b0")
    axes.set_xlabel(f"drop in holdout {scoring} when the feature is shuffled")
    axes.set_title("Permutation importance")
    figure.tight_layout()
    run.figure(figure, "feature_importance.png")
    run.json({name: float(value) for name, value in zip(names, means, strict=True)}, "feature_importance.json")


def log_classification_plots(run: RunArtifacts, model: Any, x: pd.DataFrame, y: pd.Series, bins: int = 10) -> None:
    """Confusion matrix (PNG + JSON) and calibration plot (PNG + JSON, one curve per class) into ``run``."""
    classes = list(model.classes_)
    labels = [str(label) for label in classes]
    matrix = confusion_matrix(y, model.predict(x), labels=classes)
    figure, axes = _figure(5, 4)
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center")
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title("Confusion matrix (holdout)")
    figure.tight_layout()
    run.figure(figure, "confusion_matrix.png")
    run.json({"labels": labels, "matrix": matrix.tolist()}, "confusion_matrix.json")

    probabilities = model.predict_proba(x)
    truth = np.asarray(y)
    edges = np.linspace(0, 1, bins + 1)
    curves: dict[str, list[dict[str, float]]] = {}
    figure, axes = _figure(5, 5)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for index, label in enumerate(classes[1:] if len(classes) == 2 else classes, start=1 if len(classes) == 2 else 0):
        scores, hits = probabilities[:, index], truth == label
        which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
        points = [
            {
                "predicted": float(scores[which == b].mean()),
                "observed": float(hits[which == b].mean()),
                "rows": int((which == b).sum()),
            }
            for b in range(bins)
            if (which == b).any()
        ]
        curves[str(label)] = points
        axes.plot([p["predicted"] for p in points], [p["observed"] for p in points], marker="o", label=str(label))
    axes.set_xlabel("mean predicted probability")
    axes.set_ylabel("observed share")
    axes.set_title("Calibration (holdout)")
    axes.legend(loc="upper left")
    figure.tight_layout()
    run.figure(figure, "calibration.png")
    run.json(curves, "calibration.json")
