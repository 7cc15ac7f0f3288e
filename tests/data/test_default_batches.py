"""Data expectations on the real default batches: each one passes the suite built from the ones before it."""

import pandas as pd

from mlops.spec import load_spec
from tasks.validate import validate_batch
from tests.conftest import SHIPPED_SPECS


def test_each_default_batch_passes_against_what_arrived_before(batches: list[pd.DataFrame]) -> None:
    spec = load_spec("diabetes", SHIPPED_SPECS)
    assert len(batches) == 4 and sum(len(batch) for batch in batches) == 442
    for index, batch in enumerate(batches):
        reference = pd.concat(batches[:index], ignore_index=True) if index else None
        report = validate_batch.fn(batch, f"batch {index}", spec, reference)
        assert report.success, f"batch {index}: {report.reason}"
