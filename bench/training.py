"""Training time per family on the example tables, as the training task trains (probe export, grid search
with the spec's folds, refit), plus the ONNX export and its parity; then XGBoost, LightGBM and CatBoost in every
form a spec can train them, and LightGBM exported the float32 way against ours. Prints markdown tables; not a test.

    .venv/bin/python bench/training.py                        # everything, default sizes
    .venv/bin/python bench/training.py --tables tumours diabetes --families xgboost ridge --trap-rows 20000
    .venv/bin/python bench/training.py --only trap            # one section: timing, parity or trap

Tables (``--tables``): ``diabetes`` (regression on 10 numbers), ``progression`` (regression, mixed types: the
XGBoost example, models/progression.yaml), ``tumours`` (binary, mixed types) and ``wine`` (multiclass: 6
numbers with gaps and a string column, built in ``bench/_common.py``). Seeds are fixed (the specs' and 0).

1. **Timing**: every family of the table's task (scikit-learn's and the three libraries), with the spec's
   preprocessing, through ``tasks.train.search_family`` (probe + grid search + refit; a spec's grid for its own
   family, the family's default grid otherwise), then ``to_onnx`` + session + ``check_parity`` on the holdout.
   Each library runs again with ``n_jobs`` (CatBoost: ``thread_count``) set to ``--model-threads`` through the
   grid: the families run on the library's default threads (every core) inside a search on one process.
2. **Parity** of the three libraries, table x form x ``training.preprocess``: the built-in family; a team's own
   pipeline (``bench._common:<library>_<role>_pipeline``: their ColumnTransformer of median-imputed numbers and
   ordinal-coded categories in front of 60 trees); a team's own bare model (``..._bare``). Trained the way the
   training task trains them (``search_family``: a built-in family on its default grid, a factory on no grid),
   compared on the holdout: classifiers' label agreement and max |onnx - native| probability, regressions' max
   |onnx - native| and that as a fraction of the target's range. A cell the task refuses before training says so;
   one where training raises anything else says **error**; one whose grid names parameters the estimator does not
   have (so every grid point is the same model) says **grid ignored**.
3. **The LightGBM trap**: a LightGBM model per task on the table's numeric matrix (the spec's unscaled
   preprocessing), exported the float32 way (``onnxmltools.convert_lightgbm`` on a ``FloatTensorType`` input, fed
   the matrix cast to float32) and ours (``to_onnx``: float64 input, thresholds and leaves), on the holdout plus
   ``--trap-rows`` rows resampled from the table with 1 % noise. Misrouted rows: rows that reach another leaf in at
   least one tree when the tree compares float32(x) <= float32(threshold), as the float32 graph does (a walk of
   LightGBM's dumped trees; the float64 walk is checked against LightGBM's own leaf indices).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OWN_FORMS, TABLES, factory_reference, middle_params, table_spec, variant
from bench.batch_score import mixed_table
from mlops.spec import BOOSTING_FAMILIES, CLASSIFICATION_FAMILIES, REGRESSION_FAMILIES, ModelSpec
from serving.model import open_session
from tasks.export import ExportConfig, Parity, check_parity
from tasks.features import build_estimator, default_grid, load_factory, preprocessing, target_values, typed_features
from tasks.onnx_convert import MATRIX_INPUT, ExportError, first_line, numeric_columns, to_onnx
from tasks.sample_data import example_frame
from tasks.train import Search, TrainingSet, search_family

CONFIG = ExportConfig()
FORMS = ("built-in", *(f"own {form}" for form in OWN_FORMS))


@dataclass(frozen=True)
class Trained:
    """One training as the task runs it, with its export; or why it was refused before training, or how it failed."""

    search: Search | None = None
    trained: float = 0.0
    exported: float = 0.0
    parity: Parity | None = None
    refused: str = ""
    failed: bool = False  # raised something else than the export's refusal: the training task would crash
    ignored: tuple[str, ...] = ()  # grid keys the estimator has no parameter of (every grid point the same model)

    def parity_cell(self) -> str:
        if self.parity is None:
            text = self.refused if len(self.refused) <= 90 else self.refused[:89] + "…"
            return f"{'**error**' if self.failed else 'refused'}: {text}"
        parity, note = self.parity, f"; **grid ignored** ({', '.join(self.ignored)})" if self.ignored else ""
        if parity.label_agreement is not None:
            return f"labels {parity.label_agreement:.1%}, max prob diff {parity.max_abs_error:.1e}{note}"
        ratio = parity.max_abs_error / parity.target_range
        return f"max diff {parity.max_abs_error:.1e} ({ratio:.0e} of range {parity.target_range:.0f}){note}"

    @property
    def verdict(self) -> str:
        if self.parity is None:
            return "**error**" if self.failed else "refused"
        return "pass" if self.parity.passed else "**FAIL**"


def train(spec: ModelSpec, frame: pd.DataFrame, family: str | None, reference: str | None = None) -> Trained:
    """``search_family`` as the training task calls it, then the export and its parity on the holdout."""
    data = TrainingSet(frame, spec)
    x_train, y_train, x_holdout, _ = data.split()
    factory = load_factory(reference) if reference else None
    params = build_estimator(spec, family, factory).get_params()  # CatBoost lists only the parameters set
    ignored = tuple(sorted(key for key in default_grid(spec, family) if key.rsplit("__", 1)[0] not in params))
    started = time.perf_counter()
    try:
        search = search_family(data, family, factory, x_train, y_train)
    except ExportError as error:
        return Trained(refused=first_line(error))
    except Exception as error:  # what the training task does not expect: shown, not raised, so the table goes on
        return Trained(refused=f"{type(error).__name__}: {first_line(error)}", failed=True)
    trained = time.perf_counter() - started
    model = search.search.best_estimator_
    started = time.perf_counter()
    converted = to_onnx(model, data.input_columns)
    session = open_session(converted.model.SerializeToString())
    if spec.task.is_classification:
        parity = check_parity(session, converted, model, x_holdout, 1.0, CONFIG.probability_tolerance)
    else:
        spread = float(np.ptp(y_train))
        parity = check_parity(session, converted, model, x_holdout, spread, CONFIG.parity_tolerance)
    return Trained(search, trained, time.perf_counter() - started, parity, ignored=ignored)


def timing_table(tables: list[str], families: list[str] | None, threads: int) -> dict[tuple[str, str], Trained]:
    print("| table | family | probe + search + refit, s | grid points | export + parity, s | parity | best cv score |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for name in tables:
        spec = table_spec(name)
        frame = example_frame(spec)
        task_families = CLASSIFICATION_FAMILIES if spec.task.is_classification else REGRESSION_FAMILIES
        for family in [f for f in task_families if families is None or f in families]:
            runs = [(family, variant(spec, families=[family]))]
            if threads and family in BOOSTING_FAMILIES:  # the same grid, the library on `threads` threads
                key = "model__thread_count" if family == "catboost" else "model__n_jobs"
                grid = {**default_grid(runs[0][1], family), key: [threads]}
                runs.append((f"{family} ({key.removeprefix('model__')}={threads})", variant(runs[0][1], grid=grid)))
            for label, shaped in runs:
                result = results[name, label] = train(shaped, frame, family)
                if result.search is None:
                    print(f"| {name} | {label} | {result.parity_cell()} | | | | |")
                    continue
                score = result.search.score
                quality = f"ROC AUC {score:.3f}" if spec.task.is_classification else f"RMSE {-score:.1f}"
                points = len(result.search.search.cv_results_["params"])
                print(
                    f"| {name} | {label} | {result.trained:.2f} | {points} | {result.exported:.2f} | "
                    f"{result.parity_cell()} | {quality} (cv) |"
                )
    return results


def parity_table(tables: list[str], libraries: list[str], done: dict[tuple[str, str], Trained]) -> None:
    print("| library | table (task) | form | preprocess | onnx vs native on the holdout | verdict |")
    print("|---|---|---|---|---|---|")
    for library in libraries:
        for name in tables:
            spec = table_spec(name)
            frame = example_frame(spec)
            for form in FORMS:
                for preprocess in (True, False):
                    if form == "built-in":
                        shaped = variant(spec, families=[library], preprocess=preprocess)
                        cached = done.get((name, library)) if preprocess else None
                        result = cached or train(shaped, frame, library)
                    else:
                        reference = factory_reference(library, spec.task.is_classification, form.split()[1])
                        shaped = variant(spec, pipeline=reference, preprocess=preprocess)
                        result = train(shaped, frame, None, reference)
                    print(
                        f"| {library} | {name} ({spec.task.value}) | {form} | {str(preprocess).lower()} | "
                        f"{result.parity_cell()} | {result.verdict} |"
                    )


def leaf_walk(model: Any, matrix: np.ndarray, float32: bool) -> np.ndarray:
    """The leaf every row reaches in every tree of a fitted LightGBM model, compared in float64 as LightGBM does or
    as float32(x) <= float32(threshold) as a float32 TreeEnsemble does (numeric splits; NaN goes the default way)."""
    values = matrix.astype(np.float32) if float32 else matrix
    leaves = []
    for tree in model.booster_.dump_model()["tree_info"]:
        nodes: list[dict[str, Any]] = []

        def flatten(node: dict[str, Any], nodes: list[dict[str, Any]] = nodes) -> int:
            index = len(nodes)
            nodes.append(node)
            if "leaf_index" not in node and "split_feature" in node:
                node["_left"], node["_right"] = flatten(node["left_child"]), flatten(node["right_child"])
            return index

        flatten(tree["tree_structure"])
        inner = np.array(["split_feature" in node for node in nodes])
        feature = np.array([node.get("split_feature", 0) for node in nodes])
        threshold = np.array([node.get("threshold", 0.0) for node in nodes], dtype=values.dtype)
        left = np.array([node.get("_left", 0) for node in nodes])
        right = np.array([node.get("_right", 0) for node in nodes])
        default_left = np.array([node.get("default_left", True) for node in nodes])
        leaf = np.array([node.get("leaf_index", -1) for node in nodes])
        at = np.zeros(len(values), dtype=np.int64)
        while inner[at].any():
            x = values[np.arange(len(values)), feature[at]]
            go_left = np.where(np.isnan(x), default_left[at], x <= threshold[at])
            at = np.where(inner[at], np.where(go_left, left[at], right[at]), at)
        leaves.append(leaf[at])
    return np.column_stack(leaves)


def trap_table(tables: list[str], rows: int) -> None:
    import onnxmltools
    import onnxruntime as ort
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.common.data_types import FloatTensorType

    print(
        f"\nLightGBM exported the float32 way vs ours (float64), holdout + {rows:,} resampled rows; "
        "max |onnx - LightGBM| (probability or value), rows beyond the export's tolerance, misrouted rows"
    )
    columns = [
        "table (task)", "trees", "rows", "float32: max diff", "float32: rows off", "float32: misrouted rows",
        "float32: max diff, rows routed alike", "float32: labels differ", "ours: max diff", "ours: rows off",
    ]  # fmt: skip
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    ort.set_default_logger_severity(3)  # onnxmltools declares the label [1]: onnxruntime warns on every batch
    for name in tables:
        spec = table_spec(name)
        frame = example_frame(spec)
        data = TrainingSet(frame, spec)
        x_train, y_train, x_holdout, _ = data.split()
        prep = preprocessing(spec, scale=False).fit(x_train)
        classifier = spec.task.is_classification
        codes = pd.factorize(y_train, sort=True)[0] if classifier else y_train.to_numpy()
        params = middle_params(spec, "lightgbm")
        estimator = (LGBMClassifier if classifier else LGBMRegressor)(random_state=0, verbose=-1, **params)
        model = estimator.fit(prep.transform(x_train), codes)
        more = typed_features(mixed_table(spec, rows, seed=0), spec) if rows else x_holdout.iloc[:0]
        matrix = prep.transform(pd.concat([x_holdout, more], ignore_index=True)).astype(np.float64)
        width = matrix.shape[1]
        if classifier:
            native = model.predict_proba(matrix)
            tolerance, index = CONFIG.probability_tolerance, 1
        else:
            native = model.predict(matrix).reshape(-1, 1)
            tolerance, index = CONFIG.parity_tolerance * float(np.ptp(target_values(frame, spec))), 0
        plain = onnxmltools.convert_lightgbm(
            model, initial_types=[(MATRIX_INPUT, FloatTensorType([None, width]))], zipmap=False
        )
        float32 = open_session(plain.SerializeToString()).run(None, {MATRIX_INPUT: matrix.astype(np.float32)})
        ours = open_session(to_onnx(model, numeric_columns([f"c{i}" for i in range(width)])).model.SerializeToString())
        ours_out = ours.run(None, {MATRIX_INPUT: matrix})
        differences = [np.abs(np.asarray(out[index], dtype=np.float64).reshape(native.shape) - native).max(axis=1)
                       for out in (float32, ours_out)]  # fmt: skip
        walked = leaf_walk(model, matrix, float32=False)
        assert np.array_equal(walked, model.predict(matrix, pred_leaf=True).reshape(walked.shape)), "walk != LightGBM"
        rerouted = (leaf_walk(model, matrix, float32=True) != walked).any(axis=1)
        alike = f"{differences[0][~rerouted].max():.1e}" if (~rerouted).any() else "-"
        labels = f"{int((float32[0].ravel() != native.argmax(axis=1)).sum()):,}" if classifier else "-"
        f32, mine = differences
        print(
            f"| {name} ({spec.task.value}) | {walked.shape[1]} | {len(matrix):,} | {f32.max():.1e} | "
            f"{int((f32 > tolerance).sum()):,} | {int(rerouted.sum()):,} | {alike} | {labels} | {mine.max():.1e} | "
            f"{int((mine > tolerance).sum()):,} |"
        )
    print(f"(tolerance: probability {CONFIG.probability_tolerance:g}; regression {CONFIG.parity_tolerance:g} x range)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--families", nargs="+", help="timing: only these families (parity: these libraries)")
    parser.add_argument("--only", choices=("timing", "parity", "trap"), help="one section alone")
    parser.add_argument(
        "--model-threads", type=int, default=1, help="timing: each library again on this many threads (0: not)"
    )
    parser.add_argument("--trap-rows", "--rows", type=int, default=100_000, help="resampled rows for the trap")
    args = parser.parse_args()
    np.random.seed(0)
    warnings.filterwarnings("ignore", message=r"(?s).*are not used")  # XGBoost on a grid it ignores: in the table
    done: dict[tuple[str, str], Trained] = {}
    if args.only in (None, "timing"):
        done = timing_table(args.tables, args.families, args.model_threads)
    libraries = [library for library in BOOSTING_FAMILIES if args.families is None or library in args.families]
    if args.only in (None, "parity") and libraries:
        print()
        parity_table(args.tables, libraries, done)
    if args.only in (None, "trap"):
        trap_table(args.tables, args.trap_rows)


if __name__ == "__main__":
    main()
