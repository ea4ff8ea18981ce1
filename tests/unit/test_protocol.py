"""The HTTP contract: request parsing, strict cam, multipart round trip, error objects,
the clients' local checks, and the TorchServe handler driven with TorchServe's own Context."""

from __future__ import annotations

import base64
import io
import json
import socket

import numpy as np
import pytest
from PIL import Image

import twinnet.contract.protocol as protocol
from twinnet.contract.encode import encode_json, encode_multipart, render_result
from twinnet.contract.protocol import (
    MAX_REQUEST_BYTES,
    CompareRequest,
    ProtocolError,
    check_size,
    error_from_exception,
    parse_body,
    parse_cam,
    parse_fields,
    parse_format,
)
from twinnet.core.result import CompareResult
from twinnet.errors import ImageError, TwinnetError

pytestmark = pytest.mark.unit


def _jpeg(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


# ------------------------------------------------------------------------ cam / format
@pytest.mark.parametrize(
    "value, expected",
    [
        ("true", True), ("TRUE", True), ("True", True), ("1", True), ("yes", True), ("YeS", True),
        ("false", False), ("False", False), ("0", False), ("no", False), ("NO", False),
        (b"False", False), (bytearray(b"true"), True), (True, True), (False, False),
        (1, True), (0, False), (None, False), (" true ", True),
    ],
)  # fmt: skip
def test_parse_cam_accepts_the_documented_words(value, expected):
    assert parse_cam(value) is expected


@pytest.mark.parametrize(
    "value",
    [
        "maybe",
        "2",
        "on",
        "t",
        "__import__('os').system('touch /tmp/pwned')",
        "True or 1",
        2,
        0.5,
        [],
    ],
)
def test_parse_cam_refuses_anything_else_with_400(value):
    with pytest.raises(ProtocolError) as info:
        parse_cam(value)
    assert info.value.status == 400
    assert info.value.code == "invalid_field"
    assert info.value.field == "cam"


def test_parse_format():
    assert parse_format(None) == "object"
    assert parse_format(b"list") == "list"
    for word in ("JSON", "dict", "Object"):
        assert parse_format(word) == "object"
    with pytest.raises(ProtocolError) as info:
        parse_format("xml")
    assert info.value.field == "format"


def test_server_default_format_applies_only_when_the_request_names_none():
    """``--response-format list``: the sample's clients get the list, a named format wins."""
    assert parse_format(None, default="list") == "list"
    assert parse_format(b"", default="list") == "list"
    assert parse_format("json", default="list") == "object"
    assert parse_format("list", default="object") == "list"
    left, right = _jpeg((1, 1, 1)), _jpeg((2, 2, 2))
    row = {"left": bytearray(left), "right": bytearray(right), "cam": bytearray(b"False")}
    assert parse_fields(row, default_format="list").format == "list"
    assert parse_fields({**row, "format": b"object"}, default_format="list").format == "object"
    payload = {"left": base64.b64encode(left).decode(), "right": base64.b64encode(right).decode()}
    assert parse_fields({"body": payload}, default_format="list").format == "list"
    named = {"body": {**payload, "format": "object"}}
    assert parse_fields(named, default_format="list").format == "object"
    raw = json.dumps(payload).encode()
    assert parse_body(raw, "application/json", default_format="list").format == "list"
    assert parse_body(raw, "application/json", "format=json", "list").format == "object"
    # twinnet's own clients name the format, so a server's default never changes their answer.
    for encode in (encode_multipart, encode_json):
        body, ctype = encode(left, right)
        assert parse_body(body, ctype, default_format="list").format == "object"


# ------------------------------------------------------------------------ multipart / JSON
def test_multipart_round_trip_keeps_bytes_exact():
    # Image bytes that contain CRLF and boundary-like dashes must come back unchanged.
    left = _jpeg((255, 0, 0)) + b"\r\n--twinnet-\r\n\r\n"
    right = bytes(range(256)) * 3
    for cam in (False, True):
        body, ctype = encode_multipart(left, right, cam)
        assert ctype.startswith("multipart/form-data; boundary=")
        req = parse_body(body, ctype)
        assert req == CompareRequest(left, right, cam, "object")


def test_multipart_marks_images_as_files_with_their_type():
    body, _ = encode_multipart(_jpeg((0, 0, 0)), _jpeg((9, 9, 9)))
    assert body.count(b'filename="left.jpg"') == 1
    assert body.count(b"Content-Type: image/jpeg") == 2


def test_the_original_sample_request_shape():
    """``left@c1.jpg right@c2.jpg cam=False`` as TorchServe hands it over (bytearrays)."""
    row = {
        "left": bytearray(b"L-bytes"),
        "right": bytearray(b"R-bytes"),
        "cam": bytearray(b"False"),
    }
    assert parse_fields(row) == CompareRequest(b"L-bytes", b"R-bytes", False, "object")
    row["format"] = bytearray(b"list")
    assert parse_fields(row).format == "list"


def test_json_body_forms():
    left, right = _jpeg((1, 2, 3)), _jpeg((4, 5, 6))
    body, ctype = encode_json(left, right, cam=True)
    assert parse_body(body, ctype) == CompareRequest(left, right, True, "object")
    # query string options, and TorchServe's already-decoded JSON body
    body, ctype = encode_json(left, right, cam=True, format=None)
    assert parse_body(body, ctype, query="format=list").format == "list"
    obj = json.loads(body)
    assert parse_fields({"body": obj, "format": bytearray(b"list")}).format == "list"
    # data URLs and line-wrapped base64 are accepted
    obj["left"] = "data:image/jpeg;base64," + base64.encodebytes(left).decode()
    assert parse_fields({"body": obj}).left == left


@pytest.mark.parametrize(
    "fields, code, field",
    [
        ({"left": b"x"}, "missing_field", "right"),
        ({"right": b"x"}, "missing_field", "left"),
        ({}, "missing_field", "left"),
        ({"left": b"", "right": b"x"}, "invalid_image", "left"),
        ({"left": b"x", "right": b"x", "cam": b"perhaps"}, "invalid_field", "cam"),
        ({"body": {"left": "%%%", "right": "aGk="}}, "invalid_field", "left"),
        ({"body": {"left": "aGk=", "right": 5}}, "invalid_field", "right"),
        ({"body": {"left": "aGk="}}, "missing_field", "right"),
        ({"body": [1, 2]}, "bad_request", None),
        ({"body": bytearray(b"{not json")}, "bad_request", None),
        ({"body": bytearray(b"")}, "missing_field", "left"),
    ],
)
def test_bad_requests_name_code_and_field(fields, code, field):
    with pytest.raises(ProtocolError) as info:
        parse_fields(fields)
    assert (info.value.code, info.value.field) == (code, field)
    assert info.value.status == 400
    assert info.value.to_dict()["error"]["message"]


def test_raw_image_body_is_unsupported_media_type():
    with pytest.raises(ProtocolError) as info:
        parse_fields({"body": bytearray(_jpeg((0, 0, 0)))}, "image/jpeg")
    assert info.value.status == 415


_NESTED_JSON = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    "body",
    [_NESTED_JSON, b'{"left": ' + _NESTED_JSON + b', "right": "aGk="}'],
    ids=["nested-list", "nested-in-object"],
)
def test_deeply_nested_json_is_a_400_error_object(body):
    # Both ways a JSON body arrives: raw from a plain HTTP server, and as TorchServe's
    # undecoded "body" row when its own JSON decoding gave up.
    for parse in (
        lambda: parse_body(body, "application/json"),
        lambda: parse_fields({"body": bytearray(body)}, "application/json"),
    ):
        with pytest.raises(ProtocolError) as info:
            parse()
        assert (info.value.status, info.value.code) == (400, "bad_request")
        assert "nested too deeply" in info.value.message


def _form(parts: list[tuple[bytes, bytes]], boundary: bytes = b"frontier", nl: bytes = b"\r\n"):
    """A multipart/form-data body from ``(header block, content)`` pairs, and its type."""
    body = b"".join(b"--" + boundary + nl + head + nl + nl + data + nl for head, data in parts)
    return (
        body + b"--" + boundary + b"--" + nl,
        f"multipart/form-data; boundary={boundary.decode()}",
    )


def _field(name: str, data: bytes, extra: bytes = b"") -> tuple[bytes, bytes]:
    head = f'Content-Disposition: form-data; name="{name}"; filename="{name}.bin"'.encode()
    return head + extra, data


def test_multipart_with_too_many_parts_is_a_400_before_parsing():
    left, right = _jpeg((10, 20, 30)), _jpeg((30, 20, 10))
    limit = protocol.MAX_PARTS
    parts = [_field("left", left), _field("right", right)]
    parts += [_field(f"extra{i}", b"x") for i in range(limit - 2)]
    assert parse_body(*_form(parts)) == CompareRequest(left, right)  # exactly at the limit
    too_many = [*parts, _field("one-more", b"x")]
    empty = b"--b\r\n\r\n\r\n" * 110_000 + b"--b--\r\n"  # the shape that parsed slowly
    for body, ctype in (_form(too_many), (empty, "multipart/form-data; boundary=b")):
        with pytest.raises(ProtocolError) as info:
            parse_body(body, ctype)
        assert (info.value.status, info.value.code) == (400, "bad_request")
        assert f"more than {limit} parts" in info.value.message


def test_multipart_part_that_is_itself_multipart_is_kept_as_bytes():
    # A nested multipart is not descended into, however many parts it holds.
    inner = b"--inner\r\n\r\n\r\n" * 50_000 + b"--inner--"
    nested = b"\r\nContent-Type: multipart/mixed; boundary=inner"
    right = _jpeg((1, 1, 1))
    req = parse_body(*_form([_field("left", inner, nested), _field("right", right)]))
    assert (req.left, req.right) == (inner, right)


@pytest.mark.parametrize(
    "variant",
    ["lf-line-ends", "quoted-boundary", "base64", "quoted-printable", "preamble", "no-close"],
)
def test_multipart_forms_clients_send_still_parse(variant):
    left, right = _jpeg((5, 6, 7)) + b"\r\n--frontie\r\n", bytes(range(256))
    parts = [
        _field("left", left),
        _field("right", right),
        (b'Content-Disposition: form-data; name="cam"', b"yes"),
    ]
    body, ctype = _form(parts)
    if variant == "lf-line-ends":
        body, ctype = _form(parts, nl=b"\n")
    elif variant == "quoted-boundary":
        body, ctype = _form(parts, boundary=b"a'b (c)")
        ctype = 'multipart/form-data; boundary="a\'b (c)"'
    elif variant == "base64":
        b64 = b"\r\nContent-Transfer-Encoding: base64"
        body, ctype = _form([_field("left", base64.encodebytes(left), b64), *parts[1:]])
    elif variant == "quoted-printable":
        qp = b"\r\nContent-Transfer-Encoding: quoted-printable"
        body, ctype = _form([_field("left", b"=FF=D8=FF=\r\nab", qp), *parts[1:]])
        left = b"\xff\xd8\xffab"
    elif variant == "preamble":
        body = b"ignored preamble\r\n" + body + b"ignored epilogue"
    elif variant == "no-close":
        body = body[: body.rindex(b"--frontier--")]
    assert parse_body(body, ctype) == CompareRequest(left, right, True)


def test_size_limit_is_sagemakers_6mb_and_413():
    assert MAX_REQUEST_BYTES == 6 * 1024 * 1024
    check_size(MAX_REQUEST_BYTES)
    with pytest.raises(ProtocolError) as info:
        check_size(MAX_REQUEST_BYTES + 1)
    assert info.value.status == 413
    assert info.value.code == "payload_too_large"
    with pytest.raises(ProtocolError):
        parse_body(b"x" * (MAX_REQUEST_BYTES + 1), "application/json")


def test_error_mapping_hides_internal_details():
    assert error_from_exception(ImageError("left: corrupt", field="left")).to_dict() == {
        "error": {"code": "invalid_image", "field": "left", "message": "left: corrupt"}
    }
    internal = error_from_exception(RuntimeError("secret path /opt/x"))
    assert internal.status == 500
    assert "secret" not in internal.message


def test_render_result_both_formats():
    res = CompareResult.from_logits(
        [-0.94, 0.79], cam_left=np.ones((2, 2)), cam_right=np.zeros((2, 2))
    )
    as_dict = json.loads(render_result(res))
    assert as_dict["same"] is True and as_dict["cam"]["left"] == [[1.0, 1.0], [1.0, 1.0]]
    assert json.loads(render_result(res, "list")) == [
        -0.94,
        0.79,
        [1.0, 1.0],
        [1.0, 1.0],
        [0.0, 0.0],
        [0.0, 0.0],
    ]


# ------------------------------------------------------------------------ clients, locally
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_client_connection_refused_is_one_clear_line():
    from twinnet.clients.remote import HttpClient

    client = HttpClient(f"http://127.0.0.1:{_free_port()}", token="t", timeout=5)
    with pytest.raises(TwinnetError, match="cannot connect to .*twinnet serve"):
        client.compare(_jpeg((0, 0, 0)), _jpeg((1, 1, 1)))


def test_clients_refuse_oversized_requests_before_sending():
    from twinnet.clients.remote import HttpClient

    # Nothing listens on this port: the refusal must come before any connection attempt.
    client = HttpClient(f"http://127.0.0.1:{_free_port()}", token="t")
    big = b"\xff\xd8\xff" + b"\0" * (MAX_REQUEST_BYTES // 2 + 10)
    with pytest.raises(TwinnetError, match="over the 6 MiB limit"):
        client.compare(big, big)


def test_http_client_routes():
    from twinnet.clients.remote import HttpClient

    assert HttpClient("127.0.0.1:1", token="t").endpoint == "http://127.0.0.1:1/predictions/twin"
    assert HttpClient("http://h:1/invocations", token="t").endpoint == "http://h:1/invocations"
    assert HttpClient("http://h:1", token="t", model_name="m").endpoint.endswith("/predictions/m")
    with pytest.raises(TwinnetError):
        HttpClient("ftp://h/x")


def test_sagemaker_client_without_credentials(no_aws, monkeypatch):
    pytest.importorskip("boto3")
    from twinnet.clients.sagemaker import SageMakerClient

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    client = SageMakerClient("twin-endpoint")
    with pytest.raises(TwinnetError, match="no AWS credentials found"):
        client.compare(_jpeg((0, 0, 0)), _jpeg((1, 1, 1)))


def test_sagemaker_error_messages():
    botocore = pytest.importorskip("botocore.exceptions")
    from twinnet.clients.sagemaker import _sagemaker_error

    def err(code, message, **extra):
        return botocore.ClientError(
            {"Error": {"Code": code, "Message": message}, **extra}, "InvokeEndpoint"
        )

    missing = _sagemaker_error(
        err("ValidationError", "Endpoint twin of account 1 not found."),
        "endpoint 'twin'",
        "eu-west-1",
    )
    assert "not found in region eu-west-1" in str(missing)
    body = json.dumps({"error": {"code": "invalid_image", "field": "left", "message": "left: bad"}})
    model_error = _sagemaker_error(
        err(
            "ModelError",
            "Received client error (400)",
            OriginalStatusCode=400,
            OriginalMessage=body,
        ),
        "endpoint 'twin'",
        "eu-west-1",
    )
    assert isinstance(model_error, ImageError) and model_error.field == "left"


# ------------------------------------------------------------------------ handler, in process
@pytest.fixture(scope="module")
def handler_and_twin(random_model_dir):
    pytest.importorskip("ts")
    import torch
    from ts.context import Context

    from twinnet.engines.torchserve.handler import TwinHandler
    from twinnet.infer.twin import Twin

    threads = torch.get_num_threads()  # leave the test process's thread count as it is
    config = {"minWorkers": 1, "twinnet": {"threads": threads, "precision": "fp32", "cache_mb": 16}}
    context = Context(
        "twin", str(random_model_dir), {"model": {}}, 8, None, "0.12.0", model_yaml_config=config
    )
    handler = TwinHandler()
    handler.initialize(context)
    return handler, Twin.load(random_model_dir, precision="fp32", threads=threads)


def _batch_context(rows: list[dict], headers: list[dict] | None = None):
    from ts.context import Context, RequestProcessor

    ctx = Context("twin", "/nonexistent", {"model": {}}, len(rows), None, "0.12.0")
    ctx.request_processor = [RequestProcessor(h) for h in (headers or [{} for _ in rows])]
    return ctx


def test_handler_answers_every_row_with_its_own_status(handler_and_twin):
    handler, twin = handler_and_twin
    a, b, c = _jpeg((200, 30, 30), (64, 48)), _jpeg((30, 200, 30), (50, 70)), _jpeg((30, 30, 200))
    truncated = a[: len(a) // 2]
    rows = [
        {"left": bytearray(a), "right": bytearray(b), "cam": bytearray(b"False")},
        {"left": bytearray(b"not an image"), "right": bytearray(b)},
        {"left": bytearray(a), "right": bytearray(c), "cam": bytearray(b"sure")},
        {
            "left": bytearray(c),
            "right": bytearray(a),
            "cam": bytearray(b"true"),
            "format": bytearray(b"list"),
        },
        {"left": bytearray(a), "right": bytearray(truncated)},
        {"right": bytearray(a)},
        {"body": {"left": base64.b64encode(b).decode(), "right": base64.b64encode(c).decode()}},
    ]
    ctx = _batch_context(rows)
    out = handler.handle(rows, ctx)
    assert len(out) == len(rows)
    statuses = [ctx.get_response_status(i)[0] for i in range(len(rows))]
    assert statuses == [200, 400, 400, 200, 400, 400, 200]
    bodies = [json.loads(o) for o in out]
    assert bodies[1]["error"]["code"] == "invalid_image" and bodies[1]["error"]["field"] == "left"
    assert bodies[2]["error"] == {
        "code": "invalid_field", "field": "cam", "message": "cam must be true/false/1/0/yes/no, got 'sure'"
    }  # fmt: skip
    assert bodies[4]["error"]["field"] == "right"
    assert bodies[5]["error"]["code"] == "missing_field"
    # Valid rows match the in-process library exactly.
    expect = twin.compare(a, b)
    assert bodies[0]["logits"] == pytest.approx(list(expect.logits), abs=1e-5)
    assert "cam" not in bodies[0]
    with_cam = twin.compare(c, a, cam=True)
    assert bodies[3][:2] == pytest.approx(list(with_cam.logits), abs=1e-5)
    assert np.allclose(
        np.asarray(bodies[3][2:]),
        np.concatenate([with_cam.cam_left, with_cam.cam_right]),
        atol=1e-5,
    )
    assert bodies[6]["logits"] == pytest.approx(list(twin.compare(b, c).logits), abs=1e-5)
    for i in range(len(rows)):
        headers = ctx.get_response_headers(i)
        assert headers["content-type"] == "application/json"
        assert headers["X-Twinnet-Batch-Size"] == str(len(rows))


def test_handler_refuses_oversized_rows_by_content_length(handler_and_twin):
    handler, _ = handler_and_twin
    a = _jpeg((1, 2, 3))
    rows = [{"left": bytearray(a), "right": bytearray(a)}] * 2
    headers = [{"Content-Length": str(MAX_REQUEST_BYTES + 1)}, {"Content-Length": "900"}]
    ctx = _batch_context(rows, headers)
    out = handler.handle(rows, ctx)
    assert [ctx.get_response_status(i)[0] for i in range(2)] == [413, 200]
    assert json.loads(out[0])["error"]["code"] == "payload_too_large"


def test_handler_refuses_decompression_bombs(handler_and_twin):
    handler, _ = handler_and_twin
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")  # 144 Mpx, a few KB on the wire
    rows = [{"left": bytearray(buf.getvalue()), "right": bytearray(_jpeg((0, 0, 0)))}]
    ctx = _batch_context(rows)
    out = handler.handle(rows, ctx)
    assert ctx.get_response_status(0)[0] == 400
    error = json.loads(out[0])["error"]
    assert error["code"] == "invalid_image" and error["field"] == "left"
    assert "too large" in error["message"] or "over the limit" in error["message"]


def test_handler_answers_deeply_nested_json_with_400(handler_and_twin):
    handler, _ = handler_and_twin
    a = _jpeg((9, 8, 7))
    rows = [{"body": bytearray(_NESTED_JSON)}, {"left": bytearray(a), "right": bytearray(a)}]
    headers = [{"Content-Type": "application/json"}, {}]
    ctx = _batch_context(rows, headers)
    out = handler.handle(rows, ctx)
    assert [ctx.get_response_status(i)[0] for i in range(2)] == [400, 200]
    assert json.loads(out[0])["error"]["code"] == "bad_request"


def test_handler_reads_sagemaker_custom_attributes(handler_and_twin):
    """SageMaker passes no query string; ``CustomAttributes: format=list`` travels in a header."""
    handler, twin = handler_and_twin
    a, b = _jpeg((10, 20, 30)), _jpeg((200, 100, 0))
    rows = [{"left": bytearray(a), "right": bytearray(b)}] * 2
    headers = [{"X-Amzn-SageMaker-Custom-Attributes": "format=list"}, {}]
    ctx = _batch_context(rows, headers)
    flat, obj = (json.loads(o) for o in handler.handle(rows, ctx))
    assert flat == pytest.approx(list(twin.compare(a, b).logits), abs=1e-5)
    assert obj["logits"] == flat


def test_handler_answers_in_the_archives_default_format(any_head_model_dir):
    """An archive built with ``--response-format list`` answers the sample's request with the
    flat list; a request that names its format, in a field or CustomAttributes, gets that."""
    pytest.importorskip("ts")
    import torch
    from ts.context import Context

    from twinnet.contract.options import ServeOptions
    from twinnet.engines.torchserve.handler import TwinHandler
    from twinnet.infer.twin import Twin

    threads = torch.get_num_threads()
    options = ServeOptions(workers=1, threads=threads, precision="fp32", response_format="list")
    context = Context(
        "twin", str(any_head_model_dir), {"model": {}}, 8, None, "0.12.0",
        model_yaml_config=options.to_config(),
    )  # fmt: skip
    handler = TwinHandler()
    handler.initialize(context)
    twin = Twin.load(any_head_model_dir, precision="fp32", threads=threads)
    a, b = _jpeg((10, 20, 30)), _jpeg((200, 100, 0))
    sample = {"left": bytearray(a), "right": bytearray(b), "cam": bytearray(b"True")}
    rows = [sample, {**sample, "format": bytearray(b"object")}, sample]
    headers = [{}, {}, {"X-Amzn-SageMaker-Custom-Attributes": "format=json"}]
    flat, obj, from_attributes = (
        json.loads(o) for o in handler.handle(rows, _batch_context(rows, headers))
    )
    expected = twin.compare(a, b, cam=True)
    side = twin.spec.feature_size
    assert isinstance(flat, list) and len(flat) == 2 + 2 * side
    assert flat[:2] == pytest.approx(list(expected.logits), abs=1e-5)
    assert np.allclose(
        np.asarray(flat[2:]), np.concatenate([expected.cam_left, expected.cam_right]), atol=1e-5
    )
    assert set(obj) == {"same", "probability", "logits", "threshold", "model", "cam"}
    assert obj["logits"] == flat[:2] and from_attributes == obj


# ------------------------------------------------------------------------ identification requests
def test_identify_request_forms():
    from twinnet.contract.encode import encode_identify_json, encode_identify_multipart
    from twinnet.contract.protocol import (
        DEFAULT_TOP_K,
        IdentifyRequest,
        options_from_attributes,
    )

    query = _jpeg((7, 8, 9)) + b"\r\n--twinnet-\r\n"
    # multipart, as TorchServe hands it over, and as twinnet's clients build it
    assert parse_fields({"query": bytearray(query), "top_k": bytearray(b" 3 ")}) == (
        IdentifyRequest(query, 3)
    )
    assert parse_fields({"query": bytearray(query)}).top_k == DEFAULT_TOP_K == 5
    assert parse_fields({"query": bytearray(query), "top_k": bytearray(b"")}).top_k == 5
    body, ctype = encode_identify_multipart(query, 7)
    assert parse_body(body, ctype) == IdentifyRequest(query, 7)
    # JSON: its own top_k wins over the query string's; CustomAttributes carry top_k too
    body, ctype = encode_identify_json(query, 2)
    assert json.loads(body) == {"query": base64.b64encode(query).decode(), "top_k": 2}
    assert parse_body(body, ctype, query="top_k=9") == IdentifyRequest(query, 2)
    no_k = json.dumps({"query": base64.b64encode(query).decode()}).encode()
    assert parse_body(no_k, "application/json", query="top_k=9").top_k == 9
    assert options_from_attributes("top_k=4; format=object, other=1") == {
        "top_k": "4",
        "format": "object",
    }
    # The server's default format is for comparisons; an identification is the object.
    assert isinstance(
        parse_fields({"query": bytearray(query)}, default_format="list"), IdentifyRequest
    )
    assert parse_fields({"body": {"query": base64.b64encode(query).decode(), "format": "json"}})


@pytest.mark.parametrize(
    "fields, code, field",
    [
        ({"query": b"x", "top_k": b"abc"}, "invalid_field", "top_k"),
        ({"query": b"x", "top_k": b"0"}, "invalid_field", "top_k"),
        ({"query": b"x", "top_k": b"101"}, "invalid_field", "top_k"),
        ({"query": b"x", "top_k": b"-1"}, "invalid_field", "top_k"),
        ({"query": b"x", "top_k": b"2.5"}, "invalid_field", "top_k"),
        ({"query": b"x", "top_k": b"1e3"}, "invalid_field", "top_k"),
        ({"body": {"query": "aGk=", "top_k": True}}, "invalid_field", "top_k"),
        ({"body": {"query": "aGk=", "top_k": 3.0}}, "invalid_field", "top_k"),
        ({"body": {"query": "aGk=", "top_k": 1000}}, "invalid_field", "top_k"),
        ({"query": b""}, "invalid_image", "query"),
        ({"body": {"query": ""}}, "invalid_image", "query"),
        ({"body": {"query": "%%%"}}, "invalid_field", "query"),
        ({"body": {"query": 12}}, "invalid_field", "query"),
        ({"query": b"x", "format": b"list"}, "invalid_field", "format"),
        ({"query": b"x", "cam": b"true"}, "invalid_field", "cam"),
        ({"query": b"x", "cam": b"perhaps"}, "invalid_field", "cam"),
        ({"query": b"x", "left": b"y"}, "bad_request", None),
        ({"body": {"query": "aGk=", "right": "aGk="}}, "bad_request", None),
    ],
)
def test_bad_identify_requests_name_code_and_field(fields, code, field):
    with pytest.raises(ProtocolError) as info:
        parse_fields(fields)
    assert (info.value.code, info.value.field, info.value.status) == (code, field, 400)
    assert len(info.value.message) > 20


def test_identify_client_refuses_a_bad_top_k_before_sending():
    from twinnet.clients.remote import HttpClient

    client = HttpClient(f"http://127.0.0.1:{_free_port()}", token="t", timeout=5)
    for bad in (0, 101):
        with pytest.raises(TwinnetError, match="top_k must be between 1 and 100"):
            client.identify(_jpeg((0, 0, 0)), top_k=bad)
    with pytest.raises(TwinnetError, match="cannot connect"):  # a good one is sent
        client.identify(_jpeg((0, 0, 0)), top_k=100)


def test_identification_answers_parse_back(monkeypatch):
    from twinnet.clients.remote import parse_identification

    answer = {
        "known": True,
        "matches": [{"label": "a", "probability": 0.9, "path": "/g/a/1.png"}],
        "threshold": 0.5,
        "model": "twin",
    }
    result = parse_identification(json.dumps(answer).encode(), "server")
    assert result.to_dict() == answer
    for broken in ({**answer, "known": "yes"}, {k: v for k, v in answer.items() if k != "matches"}):
        with pytest.raises(TwinnetError, match="malformed identification"):
            parse_identification(json.dumps(broken).encode(), "server")


# ------------------------------------------------------------------------ identification, in process
@pytest.fixture(scope="module")
def indexed_model(random_cosine_dir, tmp_path_factory):
    """A cosine model directory laid out as in an archive: the model files and ``index/``."""
    pytest.importorskip("faiss")
    import shutil

    from twinnet.data.datasets import make_shapes_dataset
    from twinnet.infer.twin import Twin

    base = tmp_path_factory.mktemp("indexed")
    model = base / "model"
    shutil.copytree(random_cosine_dir, model)
    gallery = make_shapes_dataset(base / "gallery", classes=4, per_class=3, size=64)
    from twinnet.index import GalleryIndex

    GalleryIndex.build(Twin.load(model, device="cpu", precision="fp32"), gallery, model / "index")
    return model, gallery


@pytest.fixture(scope="module")
def index_handler(indexed_model):
    pytest.importorskip("ts")
    import torch
    from ts.context import Context

    from twinnet.contract.options import ServeOptions
    from twinnet.engines.torchserve.handler import TwinHandler
    from twinnet.index import GalleryIndex
    from twinnet.infer.twin import Twin

    model, _ = indexed_model
    threads = torch.get_num_threads()
    # An archive whose default answer is the sample's list: identifications are still objects.
    options = ServeOptions(workers=1, threads=threads, precision="fp32", response_format="list")
    context = Context(
        "twin", str(model), {"model": {}}, 8, None, "0.12.0", model_yaml_config=options.to_config()
    )
    handler = TwinHandler()
    handler.initialize(context)
    twin = Twin.load(model, device="cpu", precision="fp32", threads=threads)
    return handler, twin, GalleryIndex.open(model / "index", twin=twin)


def _same_identification(answer: dict, expected) -> None:
    """The server's answer is the library's: same classes, paths and verdict, same numbers."""
    want = expected.to_dict()
    assert set(answer) == set(want) == {"known", "matches", "threshold", "model"}
    assert (answer["known"], answer["threshold"], answer["model"]) == (
        want["known"], want["threshold"], want["model"]
    )  # fmt: skip
    assert [(m["label"], m["path"]) for m in answer["matches"]] == [
        (m["label"], m["path"]) for m in want["matches"]
    ]
    assert [m["probability"] for m in answer["matches"]] == pytest.approx(
        [m["probability"] for m in want["matches"]], abs=1e-5
    )


def test_handler_answers_identification_rows_beside_comparisons(index_handler, indexed_model):
    handler, twin, gallery = index_handler
    _, images = indexed_model
    q1 = (images / "square_1" / "2.png").read_bytes()
    q2 = (images / "cross_3" / "0.png").read_bytes()
    q3 = _jpeg((90, 160, 20), (70, 50))
    a, b = _jpeg((200, 30, 30)), _jpeg((30, 200, 30))
    calls: list[int] = []
    real_embed = handler.service.twin.embed

    def counting(images):
        calls.append(len(images))
        return real_embed(images)

    handler.service.twin.embed = counting
    try:
        rows = [
            {"query": bytearray(q1), "top_k": bytearray(b"3")},
            {"left": bytearray(a), "right": bytearray(b)},
            {"body": {"query": base64.b64encode(q2).decode(), "top_k": 2}},
            {"query": bytearray(q3)},
            {"left": bytearray(b), "right": bytearray(a), "format": bytearray(b"object")},
        ]
        headers = [{}, {}, {}, {"X-Amzn-SageMaker-Custom-Attributes": "top_k=4"}, {}]
        ctx = _batch_context(rows, headers)
        out = [json.loads(o) for o in handler.handle(rows, ctx)]
    finally:
        del handler.service.twin.embed
    assert [ctx.get_response_status(i)[0] for i in range(len(rows))] == [200] * 5
    assert calls == [3]  # every query of the batch in one embed call
    _same_identification(out[0], gallery.identify(q1, top_k=3)[0])
    _same_identification(out[2], gallery.identify(q2, top_k=2)[0])
    _same_identification(out[3], gallery.identify(q3, top_k=4)[0])
    assert [len(out[i]["matches"]) for i in (0, 2, 3)] == [3, 2, 4]
    # A gallery image finds itself first.
    best = out[0]["matches"][0]
    assert best["label"] == "square_1"
    assert best["path"] == str((images / "square_1" / "2.png").resolve())
    assert out[0]["known"] == (best["probability"] >= out[0]["threshold"])
    # Comparisons in the same batch are answered as before, in the archive's default form.
    assert out[1] == pytest.approx(list(twin.compare(a, b).logits), abs=1e-5)
    assert out[4]["logits"] == pytest.approx(list(twin.compare(b, a).logits), abs=1e-5)


def test_bad_identification_rows_fail_alone(index_handler, indexed_model):
    handler, _, gallery = index_handler
    _, images = indexed_model
    good = (images / "circle_0" / "1.png").read_bytes()
    a = _jpeg((1, 2, 3))
    rows = [
        {"query": bytearray(b"not an image")},
        {"query": bytearray(good), "top_k": bytearray(b"0")},
        {"query": bytearray(good), "top_k": bytearray(b"many")},
        {"query": bytearray(good), "top_k": bytearray(b"101")},
        {"query": bytearray(good), "top_k": bytearray(b"2")},
        {"query": bytearray(good), "left": bytearray(a), "right": bytearray(a)},
        {"query": bytearray(b"")},
        {"query": bytearray(good), "format": bytearray(b"list")},
        {"query": bytearray(good[: len(good) // 2])},
        {"left": bytearray(a), "right": bytearray(a), "format": bytearray(b"object")},
    ]
    ctx = _batch_context(rows)
    out = [json.loads(o) for o in handler.handle(rows, ctx)]
    statuses = [ctx.get_response_status(i)[0] for i in range(len(rows))]
    assert statuses == [400, 400, 400, 400, 200, 400, 400, 400, 400, 200]
    errors = [(o["error"]["code"], o["error"]["field"]) if "error" in o else None for o in out]
    assert errors == [
        ("invalid_image", "query"),
        ("invalid_field", "top_k"),
        ("invalid_field", "top_k"),
        ("invalid_field", "top_k"),
        None,
        ("bad_request", None),
        ("invalid_image", "query"),
        ("invalid_field", "format"),
        ("invalid_image", "query"),
        None,
    ]
    assert "not both" in out[5]["error"]["message"]
    assert "comparisons only" in out[7]["error"]["message"]
    _same_identification(out[4], gallery.identify(good, top_k=2)[0])
    assert out[9]["same"] is True


def test_identification_without_an_index_is_a_400_that_says_how(handler_and_twin):
    handler, twin = handler_and_twin
    a = _jpeg((4, 5, 6))
    rows = [
        {"query": bytearray(a)},
        {"body": {"query": base64.b64encode(a).decode()}},
        {"left": bytearray(a), "right": bytearray(a)},
    ]
    ctx = _batch_context(rows)
    out = [json.loads(o) for o in handler.handle(rows, ctx)]
    assert [ctx.get_response_status(i)[0] for i in range(3)] == [400, 400, 200]
    for error in (out[0]["error"], out[1]["error"]):
        assert (error["code"], error["field"]) == ("bad_request", "query")
        assert "without a gallery index" in error["message"] and "--index" in error["message"]
    assert out[2]["logits"] == pytest.approx(list(twin.compare(a, a).logits), abs=1e-5)


# ------------------------------------------------------------------------ the docs pin the contract
def _readme_contract() -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parents[2] / "docs" / "http-contract.md").read_text()


def test_readme_identification_example_is_what_the_server_speaks(index_handler, indexed_model):
    """The identification request and answer documented in docs/http-contract.md: its
    curl fields and JSON request are accepted as written, and the answer has its keys."""
    import re

    handler, _, _ = index_handler
    _, images = indexed_model
    section = _readme_contract()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", section, re.S)]
    (request,) = [b for b in blocks if "query" in b]
    (response,) = [b for b in blocks if "known" in b]
    curl = next(line for line in section.splitlines() if "query=@" in line)
    fields = dict(re.findall(r"-F (\w+)=(\S+)", curl))
    assert set(fields) == {"query", "top_k"} and set(request) == {"query", "top_k"}

    query = (images / "circle_0" / "2.png").read_bytes()
    multipart = {"query": bytearray(query), "top_k": bytearray(fields["top_k"].encode())}
    as_json = {"body": {**request, "query": base64.b64encode(query).decode()}}
    ctx = _batch_context([multipart, as_json])
    answers = [json.loads(o) for o in handler.handle([multipart, as_json], ctx)]
    assert [ctx.get_response_status(i)[0] for i in range(2)] == [200, 200]
    for answer, top_k in zip(answers, (int(fields["top_k"]), request["top_k"]), strict=True):
        assert set(answer) == set(response)
        assert len(answer["matches"]) == top_k
        assert all(set(m) == set(response["matches"][0]) for m in answer["matches"])
        assert type(answer["known"]) is type(response["known"])
