"""One vocabulary for AWS failures: deploy, the SageMaker client and the app word them alike.

Each failure is built as botocore builds it (a real ``ClientError`` response, a real
``NoCredentialsError``) and handed to the three places that report AWS errors.
"""

from __future__ import annotations

import pytest

from twinnet.app import kit as appkit
from twinnet.aws.session import (
    CREDENTIAL_CODES,
    NO_CREDENTIALS,
    aws,
    client,
    describe_error,
    new_session,
)
from twinnet.clients.sagemaker import SageMakerClient, _sagemaker_error
from twinnet.errors import TwinnetError

pytestmark = pytest.mark.unit

botocore = pytest.importorskip("botocore.exceptions")


def _client_error(code: str, message: str, operation: str = "InvokeEndpoint"):
    return botocore.ClientError({"Error": {"Code": code, "Message": message}}, operation)


def _from_deploy(exc: BaseException) -> str:
    with pytest.raises(TwinnetError) as raised, aws("invoke endpoint 'twin'"):
        raise exc
    return str(raised.value)


def _from_client(exc: BaseException) -> str:
    return str(_sagemaker_error(exc, "twin", "eu-west-1"))


@pytest.mark.parametrize("code", sorted(CREDENTIAL_CODES))
def test_every_credential_code_reads_the_same_everywhere(code: str) -> None:
    exc = _client_error(code, "The security token included in the request is invalid.")
    expected = (
        f"invoke endpoint 'twin': AWS rejected the credentials ({code}: The security token "
        "included in the request is invalid.); refresh them or pick another profile"
    )
    assert _from_deploy(exc) == _from_client(exc) == expected
    assert appkit.user_message(exc) == expected.replace("invoke endpoint 'twin'", "AWS request")


def test_missing_credentials_read_the_same_everywhere() -> None:
    exc = botocore.NoCredentialsError()
    assert _from_deploy(exc) == appkit.user_message(exc) == NO_CREDENTIALS
    assert "AWS_ACCESS_KEY_ID" in NO_CREDENTIALS and "--profile" in NO_CREDENTIALS


def test_access_denied_reads_the_same_everywhere() -> None:
    exc = _client_error("AccessDeniedException", "not authorized to perform InvokeEndpoint")
    assert _from_deploy(exc) == _from_client(exc)
    assert "access denied (not authorized to perform InvokeEndpoint)" in _from_client(exc)


def test_the_runtimes_own_words_for_a_missing_or_busy_endpoint() -> None:
    missing = _client_error("ValidationError", "Endpoint twin of account 1 not found.")
    assert _from_client(missing).startswith("endpoint 'twin' not found in region eu-west-1; ")
    busy = _client_error("ValidationError", "Endpoint twin is Creating; not in service")
    assert _from_client(busy).startswith("endpoint 'twin' is not in service (Endpoint twin is")


def test_a_throttled_call_is_one_line_with_its_code() -> None:
    exc = _client_error("ThrottlingException", "Rate\nexceeded", "DescribeEndpoint")
    assert describe_error("describe endpoint twin", exc) == (
        "describe endpoint twin failed: ThrottlingException: Rate exceeded"
    )


def test_clients_retry_in_standard_mode(no_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Throttling and 5xx are retried with backoff: botocore's standard mode, whatever the default."""
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")
    session = new_session(region="eu-west-1")
    for service in ("sagemaker", "s3", "application-autoscaling", "resourcegroupstaggingapi"):
        assert client(session, service).meta.config.retries["mode"] == "standard"
    runtime = SageMakerClient("twin", region="eu-west-1")
    assert runtime._client.meta.config.retries["mode"] == "standard"
