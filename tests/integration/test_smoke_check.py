"""The smoke test's checks against a real server process: right model, right answers, or a clear refusal."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from serving.bundle import Example, read_bundle
from serving.healthcheck import main as healthcheck_main
from tasks.smoke import SmokeTestError, check_answers
from tests.conftest import serving_process


def test_a_server_of_the_right_model_passes_and_any_mismatch_is_named(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, metadata = read_bundle(tiny_bundle)
    assert metadata.example is not None
    with serving_process(tiny_bundle) as url:
        assert check_answers(url, metadata, timeout=10) <= 1e-9

        monkeypatch.setenv("MLOPS_SERVING_PORT", url.rsplit(":", 1)[1])
        assert healthcheck_main() == 0

        shifted = Example(metadata.example.inputs, tuple(p + 0.5 for p in metadata.example.predictions), 1e-9)
        with pytest.raises(SmokeTestError, match=r"off by 0\.5 .*allowed 1e-09"):
            check_answers(url, replace(metadata, example=shifted), timeout=10)
        with pytest.raises(SmokeTestError, match=r"reports tiny version 7 .* expected version 8"):
            check_answers(url, replace(metadata, version="8"), timeout=10)
        with pytest.raises(SmokeTestError, match="model metadata answered 404"):
            check_answers(url, replace(metadata, name="other"), timeout=10)
        with pytest.raises(SmokeTestError, match="carries no known request"):
            check_answers(url, replace(metadata, example=None), timeout=10)


def test_a_server_behind_a_token_is_checked_with_it(tiny_bundle: Path) -> None:
    _, metadata = read_bundle(tiny_bundle)
    with serving_process(tiny_bundle, env={**os.environ, "MLOPS_SERVING_TOKEN": "t0ken"}) as url:
        with pytest.raises(SmokeTestError, match="answered 401"):
            check_answers(url, metadata, timeout=10)
        assert check_answers(url, metadata, timeout=10, token="t0ken") <= 1e-9
