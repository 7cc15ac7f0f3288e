"""Data expectations on the real default batches: each one passes the suite built from the ones before it."""

import pandas as pd

from mlops.settings import Settings
from tasks.validate import ValidationPolicy, validate_batch


def test_each_default_batch_passes_against_what_arrived_before(batches: list[pd.DataFrame]) -> None:
    settings = Settings()
    columns = [*settings.spec().feature_names, settings.spec().target.column]
    assert len(batches) == 4 and sum(len(batch) for batch in batches) == 442
    for index, batch in enumerate(batches):
        reference = pd.concat(batches[:index], ignore_index=True) if index else None
        report = validate_batch.fn(batch, f"batch {index}", columns, reference, ValidationPolicy())
        assert report.success, f"batch {index}: {report.reason}"
