import pytest

from mlops.process import free_port
from tasks.tracking import TrackingServerUnavailable, check_tracking_server


def test_unreachable_tracking_server_says_what_to_do() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingServerUnavailable, match=rf"not reachable at {uri} .*mlops up"):
        check_tracking_server.fn(uri)


def test_non_http_tracking_uris_are_not_probed(tmp_path) -> None:
    check_tracking_server.fn(f"sqlite:///{tmp_path}/mlflow.db")
