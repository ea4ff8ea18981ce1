"""The app's Identify helpers that need no server: which way in, and what cannot identify."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from twinnet.app.identify import identify_remote, remote_from_env
from twinnet.app.kit import ENV, ImageInput
from twinnet.errors import ImageError, TwinnetError

pytestmark = pytest.mark.unit


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    "value, asked", [(None, False), ("", False), ("0", False), ("1", True), (" 1 ", True)]
)
def test_the_server_identifies_only_when_the_command_line_said_so(value, asked) -> None:
    env = {} if value is None else {ENV["identify"]: value}
    assert remote_from_env(env) is asked


def test_a_backend_without_identification_is_refused_with_what_to_use() -> None:
    class Comparer:
        def compare(self, left, right, cam=False):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(TwinnetError, match="--index INDEX_DIR"):
        identify_remote(Comparer(), ImageInput("q.png", _png()))


def test_an_upload_that_is_no_image_is_named_before_any_request() -> None:
    class Server:
        calls = 0

        def identify(self, query, top_k=5):  # pragma: no cover - never called
            Server.calls += 1

    with pytest.raises(ImageError, match="notes.png"):
        identify_remote(Server(), ImageInput("notes.png", b"not a picture"))
    assert Server.calls == 0
