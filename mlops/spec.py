"""The model spec: one YAML (or TOML) file per model says what the model is and how it is looked after.

A spec names the model, its task, its target and features (with their kind, whether they may
be missing and how a missing value is filled), the columns to ignore or keep as row ids, where
its data lands, how it is trained (built-in families or a pipeline factory), when a candidate
counts as better, how strictly batches are validated, and the monitoring and rollout settings.
Specs live in ``models/`` (``MLOPS_MODELS_DIR``); ``models/model-spec.schema.json`` is the JSON
Schema editors complete them with (``python -m mlops.spec --schema`` writes it).

A bad spec is refused before anything runs: :class:`SpecError` names the file, the field and
what was wrong. Nothing here imports scikit-learn, pandas or Prefect.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlops.policies import MonitorPolicy, RolloutConfig, ValidationPolicy

SPEC_SUFFIXES = (".yaml", ".yml", ".toml")
SCHEMA_FILE = "model-spec.schema.json"
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
FACTORY_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class SpecError(ValueError):
    """A model spec is missing, unreadable or invalid; the message names the file and the field."""


class Task(StrEnum):
    """What the model predicts."""

    REGRESSION = "regression"
    BINARY = "binary"
    MULTICLASS = "multiclass"

    @property
    def is_classification(self) -> bool:
        return self is not Task.REGRESSION


class Kind(StrEnum):
    """How a feature column is read and preprocessed."""

    NUMERIC = "numeric"
    INTEGER = "integer"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"


class Fill(StrEnum):
    """How a missing value is filled before the model sees it."""

    MEDIAN = "median"
    MEAN = "mean"
    MOST_FREQUENT = "most_frequent"
    CONSTANT = "constant"
    CATEGORY = "category"  # categorical only: missing is a category of its own


# The gradient-boosting libraries' families need the optional ``boosting`` extra (tasks.boosting).
BOOSTING_FAMILIES = ("xgboost", "lightgbm", "catboost")
REGRESSION_FAMILIES = ("ridge", "random_forest", "gradient_boosting", "hist_gradient_boosting", *BOOSTING_FAMILIES)
CLASSIFICATION_FAMILIES = (
    "logistic_regression",
    "random_forest",
    "gradient_boosting",
    "hist_gradient_boosting",
    *BOOSTING_FAMILIES,
)
REGRESSION_METRICS = {"rmse": "lower", "mae": "lower", "r2": "higher"}
CLASSIFICATION_METRICS = {"roc_auc": "higher", "log_loss": "lower", "accuracy": "higher", "f1_macro": "higher"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    """One input column."""

    name: str = Field(min_length=1, description="Column name as it appears in the data.")
    kind: Kind = Field(Kind.NUMERIC, description="numeric, integer, categorical or boolean.")
    nullable: bool = Field(False, description="Whether the column may be missing (validation bounds the share).")
    fill: Fill | None = Field(
        None,
        description="How a missing value is filled: median/mean/most_frequent/constant for numbers, "
        "category (its own category, the default) or constant for categories. Default: median for numbers.",
    )
    fill_value: float | str | None = Field(None, description="The value of fill: constant.")

    @model_validator(mode="after")
    def _fill_fits_kind(self) -> Feature:
        fill = self.resolved_fill
        if self.kind is Kind.CATEGORICAL and fill not in (Fill.CATEGORY, Fill.CONSTANT, Fill.MOST_FREQUENT):
            raise ValueError(f"fill {fill.value!r} does not apply to a categorical column (category, constant)")
        if self.kind is not Kind.CATEGORICAL and fill is Fill.CATEGORY:
            raise ValueError(f"fill 'category' applies to categorical columns only, {self.name!r} is {self.kind}")
        if fill is Fill.CONSTANT and self.fill_value is None:
            raise ValueError("fill: constant needs a fill_value")
        if fill is Fill.CONSTANT and self.kind is not Kind.CATEGORICAL and not isinstance(self.fill_value, int | float):
            raise ValueError(f"fill_value of a {self.kind} column must be a number")
        return self

    @property
    def resolved_fill(self) -> Fill:
        if self.fill is not None:
            return self.fill
        return Fill.CATEGORY if self.kind is Kind.CATEGORICAL else Fill.MEDIAN

    @property
    def is_categorical(self) -> bool:
        return self.kind is Kind.CATEGORICAL


class Target(_Strict):
    """The column the model predicts."""

    column: str = Field(min_length=1, description="Target column name.")
    classes: list[str | int] | None = Field(
        None,
        description="Classifiers: the class labels in order (numbers or strings). Default: the sorted labels "
        "of the training data, recorded with each run.",
    )


class DataSpec(_Strict):
    """Where the model's data lives (default: its own folders under the home)."""

    landing: str | None = Field(None, description="Folder or fsspec URI batches land in.")
    store: str | None = Field(None, description="Folder or fsspec URI for snapshots, processed, quarantine, ledger.")
    example: str | None = Field(
        None,
        pattern=FACTORY_PATTERN,
        description="`module:function` returning the example data as a DataFrame (`mlops land` cuts it in batches).",
    )


class TrainingSpec(_Strict):
    """How candidates are trained; everything here is logged with the run."""

    families: list[str] = Field(
        default_factory=list,
        description="Built-in families to search; the best by cross-validation wins. Regression: ridge, "
        "random_forest, gradient_boosting, hist_gradient_boosting. Classification: logistic_regression, "
        "random_forest, gradient_boosting, hist_gradient_boosting. Both: xgboost, lightgbm, catboost (the "
        "boosting extra). Default: ridge / logistic_regression.",
    )
    pipeline: str | None = Field(
        None,
        pattern=FACTORY_PATTERN,
        description="Your own estimator instead: `package.module:function`, called with the spec's column "
        "lists (numeric=, categorical=) and returning an unfitted scikit-learn estimator or pipeline (XGBoost, "
        "LightGBM and CatBoost models included, bare or at the end of a pipeline).",
    )
    preprocess: bool = Field(
        True,
        description="Put the spec's preprocessing (impute + scale numbers, impute + one-hot categories) in front "
        "of the estimator; false: a factory's pipeline takes the typed columns itself (as does, either way, a "
        "factory's pipeline that starts with its own ColumnTransformer).",
    )
    grid: dict[str, list[Any]] | None = Field(
        None, description="Grid over pipeline parameters (e.g. {model__alpha: [1, 10]}); default per family."
    )
    seed: int = Field(42, description="Seed of the folds and of randomised models.")
    holdout: float = Field(0.2, gt=0, lt=0.5, description="Share of rows held out, chosen by a hash of each row.")
    cv_folds: int = Field(5, ge=2, le=10, description="Folds of the grid search.")

    @model_validator(mode="after")
    def _one_source(self) -> TrainingSpec:
        if self.pipeline and self.families:
            raise ValueError("give either families or a pipeline factory, not both")
        if self.grid is not None and len(self.families) > 1:
            raise ValueError("a grid applies to one family or a pipeline; list one family or drop the grid")
        return self


class PromotionSpec(_Strict):
    """When a candidate counts as better than the champion (on the same holdout)."""

    primary: str | None = Field(None, description="The metric that must improve (default: rmse / roc_auc).")
    min_improvement: float = Field(
        0.01,
        ge=0,
        description="Required improvement of the primary metric: relative for errors (rmse, mae, log_loss: "
        "0.01 = 1% lower), absolute for scores (r2, roc_auc, accuracy, f1_macro: 0.01 = one point higher).",
    )
    tolerances: dict[str, float] = Field(
        default_factory=dict,
        description="Allowed worsening of other metrics: relative for rmse/mae/log_loss, absolute for r2, "
        "accuracy, f1_macro, roc_auc. Default: mae 0.02, r2 0.01 / log_loss 0.05, accuracy 0.01.",
    )


# The columns collected requests and batch output already carry: an id column of the same name would be lost.
RESERVED_COLUMNS = ("request_id", "row", "time", "model_version", "prediction")
CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?#-]+$")


class ScheduleSpec(_Strict):
    """When the model's own Prefect deployments run by themselves (cron, five fields; null: never)."""

    train: str | None = Field("0 3 * * 1", description="Training (deployment train/<model>); default Mondays 03:00.")
    monitor: str | None = Field(
        "5 * * * *",
        description="Monitoring of the last window (deployment monitor-model/<model>); default hourly at :05.",
    )
    timezone: str = Field("UTC", description="Time zone of both schedules (IANA name).")

    @field_validator("train", "monitor")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        fields = value.split() if value is not None else []
        if value is not None and (len(fields) != 5 or not all(CRON_FIELD.match(part) for part in fields)):
            raise ValueError(
                f"{value!r} is not a cron schedule: five fields (minute hour day month weekday), e.g. '0 3 * * 1'"
            )
        return value


class ModelSpec(_Strict):
    """Everything the system needs to know about one model."""

    name: str = Field(pattern=NAME_PATTERN, description="Registered model name (lowercase, digits, - and _).")
    description: str = ""
    task: Task = Field(description="regression, binary or multiclass.")
    target: Target
    features: list[Feature] = Field(min_length=1, description="The model's inputs, in order.")
    ids: list[str] = Field(
        default_factory=list, description="Row id columns: kept beside predictions, never learned from."
    )
    ignore: list[str] = Field(default_factory=list, description="Columns that may be present and are dropped.")
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    validation: ValidationPolicy = Field(default_factory=ValidationPolicy)
    monitoring: MonitorPolicy = Field(default_factory=MonitorPolicy)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    schedules: ScheduleSpec = Field(default_factory=ScheduleSpec)

    @field_validator("features")
    @classmethod
    def _unique_features(cls, features: list[Feature]) -> list[Feature]:
        names = [feature.name for feature in features]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"feature names must be unique, repeated: {duplicated}")
        return features

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        roles = {"target": [self.target.column], "features": self.feature_names, "ids": self.ids, "ignore": self.ignore}
        seen: dict[str, str] = {}
        for role, columns in roles.items():
            for column in columns:
                if column in seen and seen[column] != role:
                    raise ValueError(f"column {column!r} is both in {seen[column]} and in {role}")
                seen[column] = role
        clashing = [c for c in self.ids if c in RESERVED_COLUMNS or c.startswith("probability.")]
        if clashing:
            raise ValueError(
                f"ids {clashing} clash with columns collected requests and batch output carry "
                f"({', '.join(RESERVED_COLUMNS)}, probability.<class>): rename them in the data"
            )
        allowed = CLASSIFICATION_FAMILIES if self.task.is_classification else REGRESSION_FAMILIES
        unknown = [family for family in self.training.families if family not in allowed]
        if unknown:
            raise ValueError(
                f"training.families {unknown} do not fit task {self.task.value}; choose from {list(allowed)}"
            )
        if self.target.classes is not None:
            if self.task is Task.REGRESSION:
                raise ValueError("target.classes applies to classifiers only")
            expected = 2 if self.task is Task.BINARY else None
            if len(set(self.target.classes)) != len(self.target.classes) or len(self.target.classes) < 2:
                raise ValueError("target.classes must list at least two distinct labels")
            if expected and len(self.target.classes) != expected:
                raise ValueError(f"a binary task has 2 classes, target.classes lists {len(self.target.classes)}")
        metrics = self.metric_directions
        if self.promotion.primary is not None and self.promotion.primary not in metrics:
            raise ValueError(
                f"promotion.primary {self.promotion.primary!r} is not a {self.task} metric: {list(metrics)}"
            )
        unknown_metrics = sorted(set(self.promotion.tolerances) - set(metrics))
        if unknown_metrics:
            raise ValueError(f"promotion.tolerances names {unknown_metrics}, not {self.task} metrics: {list(metrics)}")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    @property
    def numeric_features(self) -> list[str]:
        return [feature.name for feature in self.features if not feature.is_categorical]

    @property
    def categorical_features(self) -> list[str]:
        return [feature.name for feature in self.features if feature.is_categorical]

    @property
    def columns(self) -> list[str]:
        """The columns a batch must have: ids, features and the target."""
        return [*self.ids, *self.feature_names, self.target.column]

    @property
    def families(self) -> list[str]:
        """The families to search (none when a pipeline factory is given)."""
        if self.training.pipeline:
            return []
        if self.training.families:
            return list(self.training.families)
        return [CLASSIFICATION_FAMILIES[0] if self.task.is_classification else REGRESSION_FAMILIES[0]]

    @property
    def metric_directions(self) -> dict[str, str]:
        return CLASSIFICATION_METRICS if self.task.is_classification else REGRESSION_METRICS

    @property
    def primary_metric(self) -> str:
        return self.promotion.primary or ("roc_auc" if self.task.is_classification else "rmse")

    @property
    def tolerances(self) -> dict[str, float]:
        defaults = {"log_loss": 0.05, "accuracy": 0.01} if self.task.is_classification else {"mae": 0.02, "r2": 0.01}
        merged = {**defaults, **self.promotion.tolerances}
        merged.pop(self.primary_metric, None)
        return merged

    @property
    def experiment(self) -> str:
        """The MLflow experiment of the model's training runs."""
        return f"{self.name}-training"

    def landing_uri(self, landing_root: str) -> str:
        """Where the model's batches land: the spec's ``data.landing``, else ``<landing root>/<name>``."""
        return self.data.landing or f"{landing_root.rstrip('/')}/{self.name}"

    def data_uri(self, data_root: str) -> str:
        """Where the model's snapshots, ledger, processed and quarantined batches live."""
        return self.data.store or f"{data_root.rstrip('/')}/{self.name}"

    def with_sections(self, **sections: BaseModel | None) -> ModelSpec:
        """The spec with whole sections replaced (flow parameters override the file), validated again.

        Raises:
            SpecError: The result is invalid (e.g. a family that does not fit the task).
        """
        raw = self.model_dump(mode="json")
        raw.update({key: value.model_dump(mode="json") for key, value in sections.items() if value is not None})
        try:
            return ModelSpec.model_validate(raw)
        except ValidationError as error:
            raise SpecError(f"model {self.name} with the run's parameters: {_describe(error)}") from error


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".toml":
        return tomllib.loads(text)
    return yaml.safe_load(text)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<spec>"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def parse_spec(path: Path) -> ModelSpec:
    """Read and validate one spec file.

    Raises:
        SpecError: The file cannot be read or parsed, or a field is invalid (named in the message).
    """
    try:
        raw = _read(path)
    except FileNotFoundError as error:
        raise SpecError(f"{path}: no such model spec") from error
    except (OSError, UnicodeDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SpecError(f"{path}: cannot be parsed: {first}") from error
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a model spec is a mapping of fields (name, task, target, features, ...)")
    raw.pop("$schema", None)
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(f"{path}: {_describe(error)}") from error
    if path.stem != spec.name:
        raise SpecError(f"{path}: name {spec.name!r} must match the file name ({path.stem!r}), so --model finds it")
    return spec


def spec_path(models_dir: Path, name: str) -> Path:
    """The spec file of ``name`` in ``models_dir``."""
    for suffix in SPEC_SUFFIXES:
        candidate = models_dir / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in models_dir.glob("*") if p.suffix in SPEC_SUFFIXES)) or "none"
    raise SpecError(f"no spec for model {name!r} in {models_dir} (known models: {known}); write {name}.yaml there")


def load_spec(model: str, models_dir: Path) -> ModelSpec:
    """A model's spec, by name (looked up in ``models_dir``) or by the path of a spec file.

    Raises:
        SpecError: No such spec, or it is invalid.
    """
    if model.endswith(SPEC_SUFFIXES):
        return parse_spec(Path(model))
    if not re.match(NAME_PATTERN, model):
        raise SpecError(f"{model!r} is neither a model name (lowercase, digits, - and _) nor a spec file")
    return parse_spec(spec_path(models_dir, model))


def spec_names(models_dir: Path) -> list[str]:
    """The model names that have a spec file in ``models_dir``."""
    return sorted({path.stem for path in models_dir.glob("*") if path.suffix in SPEC_SUFFIXES})


def list_specs(models_dir: Path) -> list[ModelSpec]:
    """Every valid spec in ``models_dir``, by name (an invalid one raises: it is refused, not skipped)."""
    return [parse_spec(path) for path in sorted(models_dir.glob("*")) if path.suffix in SPEC_SUFFIXES]


def json_schema() -> dict[str, Any]:
    schema = ModelSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mlops model spec"
    return schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlops.spec", description="Check model specs or write their schema."
    )
    parser.add_argument("specs", nargs="*", type=Path, help="spec files to check")
    parser.add_argument("--schema", type=Path, help=f"write the JSON Schema to this file (e.g. models/{SCHEMA_FILE})")
    args = parser.parse_args(argv)
    if args.schema:
        args.schema.write_text(json.dumps(json_schema(), indent=2) + "\n")
    status = 0
    for path in args.specs:
        try:
            spec = parse_spec(path)
            print(f"{path}: ok ({spec.task.value}, {len(spec.features)} features)")
        except SpecError as error:
            print(error, file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
