"""Training time per family on the example tables, as the training task trains (probe export, grid search
with the spec's folds, refit), plus the ONNX export and its parity. Prints a table; not a test.

    uv run python bench/training.py            # tumours (binary, mixed types) and diabetes (regression)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops.spec import CLASSIFICATION_FAMILIES, REGRESSION_FAMILIES, load_spec  # noqa: E402
from serving.model import open_session  # noqa: E402
from tasks.export import check_parity  # noqa: E402
from tasks.onnx_convert import to_onnx  # noqa: E402
from tasks.sample_data import diabetes_frame, tumours_frame  # noqa: E402
from tasks.train import TrainingSet, search_family  # noqa: E402


def main() -> None:
    print("| table | family | probe + search + refit, s | grid points | export + parity, s | parity | best cv score |")
    print("|---|---|---|---|---|---|---|")
    for name, frame, families in (
        ("tumours", tumours_frame(), CLASSIFICATION_FAMILIES),
        ("diabetes", diabetes_frame(), REGRESSION_FAMILIES),
    ):
        spec = load_spec(name, ROOT / "models")
        data = TrainingSet(frame, spec)
        x_train, y_train, x_holdout, _ = data.split()
        for family in families:
            started = time.perf_counter()
            search = search_family(data, family, None, x_train, y_train)
            trained = time.perf_counter() - started
            model = search.search.best_estimator_
            started = time.perf_counter()
            converted = to_onnx(model, data.input_columns)
            session = open_session(converted.model.SerializeToString())
            if spec.task.is_classification:
                parity = check_parity(session, converted, model, x_holdout, 1.0, 1e-5)
                figure = f"labels {parity.label_agreement:.0%}, max prob diff {parity.max_abs_error:.1e}"
                quality = f"ROC AUC {search.score:.3f} (cv)"
            else:
                spread = float(np.ptp(y_train))
                parity = check_parity(session, converted, model, x_holdout, spread, 1e-5)
                figure = f"max diff {parity.max_abs_error:.1e} (range {spread:.0f})"
                quality = f"RMSE {-search.score:.1f} (cv)"
            exported = time.perf_counter() - started
            points = len(search.search.cv_results_["params"])
            print(f"| {name} | {family} | {trained:.2f} | {points} | {exported:.2f} | {figure} | {quality} |")


if __name__ == "__main__":
    main()
