"""The app's helpers (twinnet.app.kit, the backend choice, the result cache) and ``twinnet app``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from twinnet.app import kit as appkit
from twinnet.app.kit import ImageInput
from twinnet.clients.backends import BackendChoice
from twinnet.errors import ImageError, TwinnetError
from twinnet.infer.cache import LruCache

pytestmark = pytest.mark.unit


def png(size: tuple[int, int] = (40, 20), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def exif_rotated_jpeg(size: tuple[int, int] = (40, 20), orientation: int = 6) -> bytes:
    """A JPEG stored landscape whose EXIF says "rotate 90°", as phone cameras write them."""
    img = Image.new("RGB", size, (10, 120, 240))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


# --------------------------------------------------------------------------- backend choice


def test_choice_round_trips_through_the_environment() -> None:
    for choice in (
        BackendChoice("model", "/models/pets"),
        BackendChoice("url", "http://127.0.0.1:8080"),
        BackendChoice("endpoint", "twin-prod", region="eu-west-1"),
    ):
        assert appkit.choice_from_env(appkit.choice_to_env(choice)) == choice
    assert appkit.choice_from_env({}) is None
    assert appkit.choice_to_env(None) == {}


def test_choice_keeps_the_token_out_of_keys_and_reprs() -> None:
    a = BackendChoice("url", "http://h:8080", token="s3cret")
    b = BackendChoice("url", "http://h:8080")
    assert a.key == b.key
    assert "s3cret" not in repr(a) and "s3cret" not in a.key
    assert "s3cret" not in str(appkit.choice_to_env(a))


@pytest.mark.parametrize("kind,target", [("model", "  "), ("ftp", "x")])
def test_choice_refuses_empty_targets_and_unknown_kinds(kind: str, target: str) -> None:
    with pytest.raises(TwinnetError):
        BackendChoice(kind, target)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "host,expected",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_loopback_hosts(host: str, expected: bool) -> None:
    assert appkit.is_loopback(host) is expected


def test_locked_reads_the_flag() -> None:
    assert appkit.is_locked({"TWINNET_APP_LOCKED": "1"})
    assert not appkit.is_locked({"TWINNET_APP_LOCKED": "0"})
    assert not appkit.is_locked({})


# --------------------------------------------------------------------------- images


def test_samples_come_from_the_model_directorys_samples_folder(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "samples" / "cats").mkdir(parents=True)
    (model / "samples" / ".hidden").mkdir()
    (model / "twinnet.json").write_text("{}")
    (model / "samples" / "cats" / "b.JPG").write_bytes(b"x")
    (model / "samples" / "a.png").write_bytes(b"x")
    (model / "samples" / "notes.txt").write_text("not an image")
    (model / "samples" / ".hidden" / "c.png").write_bytes(b"x")
    found = appkit.list_samples(model)
    assert [p.relative_to(model / "samples").as_posix() for p in found] == ["a.png", "cats/b.JPG"]
    # A model directory without samples offers none (its own files are no images anyway).
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "twinnet.json").write_text("{}")
    assert appkit.list_samples(tmp_path / "bare") == []
    # A plain folder (twinnet app --samples DIR) is used as it is.
    assert [p.name for p in appkit.list_samples(model / "samples")] == ["a.png", "b.JPG"]
    assert appkit.list_samples(None) == []
    assert appkit.list_samples(tmp_path / "missing") == []


def test_load_folder_names_images_by_relative_path_and_caps_them(tmp_path: Path) -> None:
    (tmp_path / "g" / "sub").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "g" / f"{i}.png").write_bytes(png())
    (tmp_path / "g" / "sub" / "z.png").write_bytes(png())
    images, left_out = appkit.load_folder(str(tmp_path / "g"), limit=3)
    assert [i.name for i in images] == ["0.png", "1.png", "2.png"] and left_out == 1
    images, left_out = appkit.load_folder(str(tmp_path / "g"))
    assert images[-1].name == "sub/z.png" and left_out == 0


def test_load_folder_explains_a_wrong_folder(tmp_path: Path) -> None:
    with pytest.raises(TwinnetError, match="not a folder"):
        appkit.load_folder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TwinnetError, match="holds no images"):
        appkit.load_folder(str(tmp_path / "empty"))


def test_preview_applies_exif_rotation_and_keeps_the_aspect_ratio() -> None:
    # Stored 40x20 with "rotate 90°": the person holding the phone saw 20x40.
    img = appkit.decode_preview(ImageInput("phone.jpg", exif_rotated_jpeg((40, 20))))
    assert img.size == (20, 40)
    big = appkit.decode_preview(ImageInput("wide.png", png((3000, 1000))), max_side=600)
    assert big.size == (600, 200)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_preview_reads_every_uploadable_format(fmt: str) -> None:
    out = io.BytesIO()
    Image.new("RGB", (30, 18), (0, 200, 0)).save(out, format=fmt)
    assert appkit.decode_preview(ImageInput(f"x.{fmt.lower()}", out.getvalue())).size == (30, 18)


def test_preview_names_an_unreadable_file() -> None:
    with pytest.raises(ImageError, match="holiday.png"):
        appkit.decode_preview(ImageInput("holiday.png", b"this is not an image"))
    with pytest.raises(ImageError, match="empty"):
        appkit.decode_preview(ImageInput("empty.png", b""))


def test_remote_payload_shrinks_only_what_a_server_would_refuse() -> None:
    small = ImageInput("s.png", png())
    assert appkit.remote_payload(small) is small.data
    photo = ImageInput("phone.jpg", exif_rotated_jpeg((400, 100)))
    sent = appkit.remote_payload(photo, limit=100, max_side=50)
    img = Image.open(io.BytesIO(sent))
    # Rotation is applied before shrinking, so the server needs no EXIF.
    assert img.format == "JPEG" and img.height == 50 and img.width in (12, 13)


def test_image_input_from_a_missing_path_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        ImageInput.from_path(tmp_path / "gone.png")


# --------------------------------------------------------------------------- results


def test_lru_cache_evicts_the_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    assert cache.put("a", 1) == 1
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    assert cache.keys() == ["a", "c"]  # least recently used first ("c" was read last)
    empty: LruCache[str, int] = LruCache(0)
    assert empty.put("a", 1) == 1 and "a" not in empty  # capacity 0 keeps nothing
    with pytest.raises(ValueError):
        LruCache(-1)


def test_lru_cache_weighs_entries() -> None:
    cache: LruCache[str, bytes] = LruCache(10, weigh=len)
    cache.put("a", b"12345")
    cache.put("b", b"1234")
    cache.put("c", b"12")  # 11 > 10: "a" goes
    assert cache.keys() == ["b", "c"] and cache.weight == 6
    cache.put("huge", b"x" * 11)  # heavier than the whole cache: not stored, nothing evicted
    assert cache.keys() == ["b", "c"]


def test_result_keys_change_with_images_backend_and_cam_only() -> None:
    model = BackendChoice("model", "/m")
    a, b = ImageInput("a.png", png(color=(1, 2, 3))), ImageInput("b.png", png(color=(4, 5, 6)))
    key = appkit.result_key(model, a, b, False)
    assert appkit.result_key(model, ImageInput("renamed.png", a.data), b, False) == key
    assert appkit.result_key(model, b, a, False) != key
    assert appkit.result_key(model, a, b, True) != key
    assert appkit.result_key(BackendChoice("url", "http://h:1"), a, b, False) != key
    assert appkit.gallery_key(model, a, [a, b]) != appkit.gallery_key(model, a, [b, a])


def test_rank_gallery_refuses_an_empty_gallery() -> None:
    with pytest.raises(TwinnetError, match="empty"):
        appkit.rank_gallery(object(), ImageInput("q.png", png()), [])


# --------------------------------------------------------------------------- errors


def test_missing_aws_credentials_become_advice() -> None:
    from botocore.exceptions import NoCredentialsError, NoRegionError

    assert "AWS_ACCESS_KEY_ID" in appkit.user_message(NoCredentialsError())
    assert "region" in appkit.user_message(NoRegionError())


def test_aws_client_errors_are_worded_as_everywhere_else() -> None:
    from botocore.exceptions import ClientError

    from twinnet.aws.session import describe_error

    denied = ClientError(
        {"Error": {"Code": "UnrecognizedClientException", "Message": "bad token"}}, "ListEndpoints"
    )
    assert appkit.user_message(denied) == describe_error("AWS request", denied)
    assert "AWS rejected the credentials (UnrecognizedClientException: bad token)" in (
        appkit.user_message(denied)
    )


def test_connection_failures_become_advice_and_bugs_do_not() -> None:
    import requests

    assert "did not answer" in appkit.user_message(requests.ConnectionError("refused"))
    assert "in time" in appkit.user_message(requests.ReadTimeout("slow"))
    assert appkit.user_message(TwinnetError("plain words")) == "plain words"
    assert appkit.user_message(ValueError("a bug")) is None


def test_listing_endpoints_without_credentials_is_a_twinnet_error(
    no_aws: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Real boto3, no credentials anywhere: the sidebar gets advice, not a traceback."""
    from twinnet.aws.endpoints import list_endpoints
    from twinnet.clients.sagemaker import SageMakerClient

    with pytest.raises(TwinnetError, match="no AWS credentials"):
        list_endpoints(region="us-east-1")
    endpoint = BackendChoice("endpoint", "twin", region="us-east-1").open()
    assert isinstance(endpoint, SageMakerClient)
    with pytest.raises(TwinnetError, match="no AWS credentials"):
        endpoint.compare(png(), png())


def test_default_region_comes_from_the_aws_configuration(
    no_aws: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from twinnet.aws.session import default_region

    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert default_region() == "us-east-1"
    config = tmp_path / "config"
    config.write_text("[default]\nregion = ap-southeast-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert default_region() == "ap-southeast-2"


def test_remote_backends_say_they_have_no_spec_and_no_search() -> None:
    """The Backend protocol: callers read ``spec`` and ``search``; they never probe."""
    from twinnet.clients.backends import resize_method
    from twinnet.clients.remote import HttpClient

    server = BackendChoice("url", "http://127.0.0.1:1", token="t").open()
    assert isinstance(server, HttpClient)
    assert server.spec is None and server.search is None
    assert resize_method(server) == "squish" and resize_method(None) == "squish"


# --------------------------------------------------------------------------- command line


def parse(*argv: str):
    from twinnet.cli import build_parser

    return build_parser().parse_args(["app", *argv])


def test_command_runs_streamlit_headless_on_loopback(tmp_path: Path) -> None:
    from twinnet.cli.app import build_command

    argv, env = build_command(
        parse("--model", str(tmp_path), "--port", "9123"),
        environ={"TWINNET_APP_URL": "http://stale:1", "PATH": "/bin"},
    )
    flags = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4].endswith("twinnet/app/page.py")
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "9123"
    assert flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false"
    assert env["TWINNET_APP_MODEL"] == str(tmp_path.resolve())
    assert "TWINNET_APP_URL" not in env and "TWINNET_APP_LOCKED" not in env
    assert env["PATH"] == "/bin"


def test_command_passes_an_endpoint_and_locks_a_public_app() -> None:
    from twinnet.cli.app import build_command, exposure_warning

    args = parse("--endpoint", "twin", "--region", "eu-west-1", "--host", "0.0.0.0")
    argv, env = build_command(args, environ={})
    assert env["TWINNET_APP_ENDPOINT"] == "twin" and env["TWINNET_APP_REGION"] == "eu-west-1"
    assert env["TWINNET_APP_LOCKED"] == "1"
    assert argv[argv.index("--server.address") + 1] == "0.0.0.0"
    assert "0.0.0.0" in exposure_warning("0.0.0.0")
    assert exposure_warning("127.0.0.1") is None


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "/no/such/model"], "not a model directory"),
        (["--url", "127.0.0.1:8080"], "must start with http"),
        (["--region", "eu-west-1"], "--region goes with --endpoint"),
        (["--port", "70000"], "--port"),
    ],
)
def test_command_refuses_a_bad_choice_before_starting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from twinnet.cli import main

    assert main(["app", *argv]) == 2
    assert message in capsys.readouterr().err


def test_command_accepts_one_backend_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--model", "m", "--url", "http://h:1")
    assert "not allowed with" in capsys.readouterr().err
