"""Checks the deploy stage makes before it talks to AWS: sizes, names, ARNs, arguments.

Each guard exists so that a mistake costs nothing: no upload, no half-created endpoint,
no request that SageMaker would refuse after the bytes were sent.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest

from twinnet.aws.sagemaker import (
    Autoscale,
    parse_autoscale,
    validate_endpoint_name,
    validate_role_arn,
)
from twinnet.cli import main
from twinnet.clients.remote import prepare_body
from twinnet.container.package import find_mar
from twinnet.contract.encode import encode_multipart
from twinnet.contract.protocol import MAX_REQUEST_BYTES
from twinnet.errors import ImageError, TwinnetError

pytestmark = pytest.mark.unit

ROLE = "arn:aws:iam::123456789012:role/twinnet-sagemaker"


@pytest.fixture
def listener():
    """A loopback TCP port that counts the connections made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    hits: list[int] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            hits.append(1)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", hits
    stop.set()
    thread.join(2)
    server.close()


# ----------------------------------------------------------------- --autoscale


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:4", Autoscale(1, 4)),
        ("2:2", Autoscale(2, 2)),
        ("0:3", Autoscale(0, 3)),
        ("1:8:250", Autoscale(1, 8, 250.0)),
        (" 1:3:12.5 ", Autoscale(1, 3, 12.5)),
    ],
)
def test_autoscale_parses(text, expected):
    assert parse_autoscale(text) == expected


def test_autoscale_targets_default_by_mode():
    assert Autoscale(1, 4).target_for("realtime") == 70.0
    assert Autoscale(0, 4).target_for("async") == 5.0
    assert Autoscale(0, 4, 12.0).target_for("async") == 12.0
    assert Autoscale(0, 2).describe("async") == "0-2 instances at 5 queued requests/instance"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("4", "MIN:MAX"),
        ("1:2:3:4", "MIN:MAX"),
        ("a:b", "whole instance counts"),
        ("1.5:3", "whole instance counts"),
        ("-1:3", "not be negative"),
        ("0:0", "at least 1"),
        ("3:2", "MAX must be at least MIN"),
        ("1:3:0", "positive"),
        ("1:3:-5", "positive"),
        ("1:3:nan", "finite"),
        ("1:3:inf", "finite"),
    ],
)
def test_autoscale_rejects(text, fragment):
    with pytest.raises(TwinnetError, match=fragment):
        parse_autoscale(text)


def test_cli_rejects_bad_autoscale_before_anything(no_aws, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "deploy",
                str(tmp_path),
                "--endpoint",
                "e",
                "--bucket",
                "b",
                "--role",
                ROLE,
                "--image",
                "img",
                "--autoscale",
                "5:1",
            ]
        )
    assert exc.value.code == 2
    assert "MAX must be at least MIN" in capsys.readouterr().err


def test_count_outside_autoscale_range_is_refused(no_aws, capsys, random_model_dir):
    code = main(
        [
            "deploy",
            str(random_model_dir),
            "--endpoint",
            "e",
            "--bucket",
            "b",
            "--role",
            ROLE,
            "--image",
            "img",
            "--autoscale",
            "2:4",
            "--count",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "error: --count 1 is outside --autoscale 2:4"


# ----------------------------------------------------------------- names and ARNs


@pytest.mark.parametrize(
    "arn",
    [
        ROLE,
        "arn:aws:iam::000000000000:role/service-role/AmazonSageMaker-ExecutionRole-20240101T000000",
        "arn:aws-cn:iam::123456789012:role/x",
        "arn:aws-us-gov:iam::123456789012:role/a.b@c=d,e+f",
    ],
)
def test_role_arn_accepts(arn):
    assert validate_role_arn(arn) == arn


@pytest.mark.parametrize(
    "arn",
    [
        "",
        "twinnet-role",
        "arn:aws:iam::12345678901:role/x",  # 11 digits
        "arn:aws:iam::1234567890123:role/x",  # 13 digits
        "arn:aws:iam::123456789012:user/alice",
        "arn:aws:iam::123456789012:role/",
        "arn:aws:s3:::bucket",
        "arn:aws:iam::123456789012:role/has space",
    ],
)
def test_role_arn_rejects(arn):
    with pytest.raises(TwinnetError, match="not an IAM role ARN"):
        validate_role_arn(arn)


def test_wrong_role_is_one_line_and_needs_no_aws(no_aws, capsys, random_model_dir):
    code = main(
        [
            "deploy",
            str(random_model_dir),
            "--endpoint",
            "demo",
            "--bucket",
            "b",
            "--role",
            "arn:aws:iam::123:role/x",
            "--image",
            "img",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: --role 'arn:aws:iam::123:role/x' is not")


@pytest.mark.parametrize("name", ["a", "twin-demo", "A1-b2-C3", "x" * 63, "a--b"])
def test_endpoint_names_accepted(name):
    assert validate_endpoint_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "a_b", "a.b", "x" * 64, "twin demo"])
def test_endpoint_names_rejected(name):
    with pytest.raises(TwinnetError, match="endpoint name"):
        validate_endpoint_name(name)


# ----------------------------------------------------------------- credentials


def test_missing_credentials_is_one_line(no_aws, capsys, random_model_dir):
    code = main(
        [
            "deploy",
            str(random_model_dir),
            "--endpoint",
            "demo",
            "--bucket",
            "b",
            "--role",
            ROLE,
            "--image",
            "img",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("error: no AWS credentials found")


def test_unknown_profile_is_one_line(no_aws, capsys):
    code = main(["endpoints", "--profile", "nope-not-here"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nope-not-here" in err


def test_missing_region_is_one_line(no_aws, monkeypatch, capsys):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    code = main(["endpoints"])
    assert code == 2
    assert (
        capsys.readouterr().err == "error: no AWS region: pass --region or set AWS_DEFAULT_REGION\n"
    )


# ----------------------------------------------------------------- the 6 MB guard


def _payload(n: int) -> bytes:
    """``n`` bytes that look like a JPEG to the encoder (content does not matter here)."""
    return b"\xff\xd8\xff" + bytes(n - 3)


def test_guard_counts_the_whole_multipart_body():
    left, right = _payload(1000), _payload(2000)
    body, _ = prepare_body(left, right, cam=True)
    assert len(body) == len(encode_multipart(left, right, cam=True)[0]) > 3000


def test_guard_boundary_is_exact():
    """Find the largest request that fits: one more byte must be refused."""
    overhead = len(encode_multipart(_payload(10), _payload(10))[0]) - 20
    fits = MAX_REQUEST_BYTES - overhead
    left, right = _payload(fits // 2), _payload(fits - fits // 2)
    assert len(prepare_body(left, right)[0]) == MAX_REQUEST_BYTES
    with pytest.raises(TwinnetError, match="over the 6 MiB limit .*; nothing was sent"):
        prepare_body(left, right + b"\0")


def test_an_empty_image_is_refused_before_sending(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: empty file") as exc:
        prepare_body(_payload(10), empty)
    assert exc.value.field == "right"


def test_invoke_refuses_oversized_request_before_sending(
    no_aws, monkeypatch, listener, tmp_path, capsys
):
    url, hits = listener
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(_payload(3 * 2**20))
    b.write_bytes(_payload(3 * 2**20))
    code = main(["invoke", "demo", str(a), str(b)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "over the 6 MiB limit of SageMaker and twinnet servers; nothing was sent" in err
    assert hits == []


def test_invoke_is_compare_with_an_endpoint():
    """`twinnet invoke NAME A B` and `twinnet compare --endpoint NAME A B` are one code path."""
    from twinnet.cli import build_parser

    parser = build_parser()
    common = ["--cam", "out.png", "--json", "--region", "eu-west-1", "--profile", "p"]
    invoke = vars(parser.parse_args(["invoke", "twin", "a.jpg", "b.jpg", *common]))
    compare = vars(parser.parse_args(["compare", "a.jpg", "b.jpg", "--endpoint", "twin", *common]))
    for args in (invoke, compare):
        del args["command"]
        args["model"] = None  # compare's default comes from $TWINNET_MODEL
    assert invoke == compare
    assert invoke["func"].__name__ == "run_compare"


def test_invoke_missing_file_is_one_line(no_aws, capsys, tmp_path):
    code = main(["invoke", "demo", str(tmp_path / "nope.jpg"), str(tmp_path / "nope2.jpg")])
    assert code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.jpg'}: no such file\n"


# ----------------------------------------------------------------- other arguments


def test_env_pairs():
    from twinnet.cli.deploy import parse_env

    assert parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(TwinnetError, match="KEY=VALUE"):
        parse_env(["novalue"])


def test_find_mar(tmp_path: Path):
    with pytest.raises(TwinnetError, match="does not exist"):
        find_mar(tmp_path / "missing")
    with pytest.raises(TwinnetError, match="no TorchServe archive"):
        find_mar(tmp_path)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "twin.mar").write_bytes(b"PK")
    assert find_mar(tmp_path) == tmp_path / "code" / "twin.mar"
    (tmp_path / "twin.mar").write_bytes(b"PK")
    assert find_mar(tmp_path) == tmp_path / "twin.mar"  # the top level wins
    (tmp_path / "other.mar").write_bytes(b"PK")
    with pytest.raises(TwinnetError, match="several archives"):
        find_mar(tmp_path)


# ----------------------------------------------------------------- the container's settings


def test_container_accepts_sagemakers_serve_argument():
    """SageMaker runs `docker run IMAGE serve`: the ENTRYPOINT gets one more "serve"."""
    from twinnet.cli import build_parser

    parser = build_parser()
    for argv in (["container", "serve"], ["container", "serve", "serve"]):
        args = parser.parse_args(argv)
        assert args.model_dir == "/opt/ml/model" and args.func.__name__ == "run_container_serve"
    with pytest.raises(SystemExit):
        parser.parse_args(["container", "serve", "train"])


def test_container_settings_from_environment():
    from twinnet.container.settings import settings_from_env

    default = settings_from_env({})
    assert (default.port, default.host, default.overrides) == (8080, "0.0.0.0", {})
    assert default.invocation_timeout < 60  # inside SageMaker's invocation limit
    s = settings_from_env(
        {
            "SAGEMAKER_BIND_TO_PORT": "9090",
            "TWINNET_BATCH_SIZE": "4",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
            "SAGEMAKER_MODEL_SERVER_TIMEOUT": "30",
            "TWINNET_RESPONSE_TIMEOUT": "20",  # the twinnet name wins over SageMaker's
            "TWINNET_THREADS": "auto",
            "TWINNET_PRECISION": "FP32",
            "TWINNET_MAX_BATCH_DELAY": "0",
            "TWINNET_STARTUP_TIMEOUT": "900",
        }
    )
    assert s.port == 9090 and s.startup_timeout == 900
    assert s.overrides == {
        "batch_size": 4,
        "max_batch_delay": 0,
        "workers": 2,
        "threads": "auto",
        "response_timeout": 20,
        "precision": "fp32",
    }


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SAGEMAKER_BIND_TO_PORT": "http"}, "SAGEMAKER_BIND_TO_PORT='http'"),
        ({"SAGEMAKER_BIND_TO_PORT": "70000"}, "not a port number"),
        ({"TWINNET_BATCH_SIZE": "0"}, "TWINNET_BATCH_SIZE='0': expected a whole number >= 1"),
        ({"TWINNET_WORKERS": "-1"}, "TWINNET_WORKERS"),
        ({"TWINNET_THREADS": "many"}, "TWINNET_THREADS"),
        ({"TWINNET_PRECISION": "fp8"}, "expected auto, int8, bf16 or fp32"),
    ],
)
def test_container_settings_rejected(env, fragment):
    from twinnet.container.settings import settings_from_env

    with pytest.raises(TwinnetError, match=re.escape(fragment)):
        settings_from_env(env)


def test_package_records_the_response_format_and_changes_the_digest(random_model_dir, tmp_path):
    import tarfile
    import zipfile

    from twinnet.aws.plan import artifact_digest
    from twinnet.cli import main
    from twinnet.contract.options import CONFIG_FILE, ServeOptions

    out = tmp_path / "model.tar.gz"
    assert (
        main(["package", str(random_model_dir), "--out", str(out), "--response-format", "list"])
        == 0
    )
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    (mar,) = (tmp_path / "x").glob("*.mar")
    with zipfile.ZipFile(mar) as zf:
        options = ServeOptions.from_yaml(zf.read(CONFIG_FILE))
    assert options.response_format == "list"
    plain = artifact_digest(random_model_dir, {})
    assert artifact_digest(random_model_dir, {"response_format": "list"}) != plain
