import pytest

from mlops.process import free_port
from tasks.tracking import TrackingServerUnavailable, check_tracking_server


def test_unreachable_tracking_server_says_what_to_do() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingServerUnavailable, match=rf"not reachable at {uri} .*mlops up"):
        check_tracking_server.fn(uri)


def test_non_http_tracking_uris_are_not_probed(tmp_path) -> None:
    check_tracking_server.fn(f"sqlite:///{tmp_path}/mlflow.db")


def test_a_stopped_tracking_server_fails_an_mlflow_call_in_seconds_and_says_so() -> None:
    """MLflow's own client would retry for minutes; ours gives up after its bounded retries."""
    import time

    from mlflow.exceptions import MlflowException

    from tasks.tracking import client, describe_failure

    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(MlflowException) as raised:
        client(uri).get_registered_model("diabetes")
    assert time.monotonic() - started < 60  # unbounded, this took over 5 minutes
    assert describe_failure(uri, raised.value).startswith(
        f"tracking server unreachable: MLflow tracking server not reachable at {uri}"
    )
