"""The gateway's limits, read from the container's environment."""

from __future__ import annotations

import pytest

from twinnet.container.settings import settings_from_env
from twinnet.errors import TwinnetError

pytestmark = pytest.mark.unit


def test_gateway_limits_from_environment():
    default = settings_from_env({})
    assert (default.gateway_threads, default.max_connections) == (32, 500)
    s = settings_from_env({"TWINNET_GATEWAY_THREADS": "8", "TWINNET_MAX_CONNECTIONS": "2000"})
    assert (s.gateway_threads, s.max_connections) == (8, 2000)


@pytest.mark.parametrize("var", ["TWINNET_GATEWAY_THREADS", "TWINNET_MAX_CONNECTIONS"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_gateway_limits_rejected(var, value):
    with pytest.raises(TwinnetError, match=var):
        settings_from_env({var: value})
