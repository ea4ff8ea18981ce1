"""The Streamlit app driven through Streamlit's AppTest, with a real model and real servers.

Every path a user can take through the page: upload and compare, explain, samples, the
gallery (uploads and a folder), and each failure shown as a one-line error, never a
traceback: an unreadable image, a server that does not answer, missing AWS credentials,
an endpoint that is not in service.
"""

from __future__ import annotations

import io
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twinnet.app import kit as appkit

pytestmark = pytest.mark.integration

APP = str(Path(__file__).resolve().parents[2] / "src" / "twinnet" / "app" / "page.py")
TIMEOUT = 180


@pytest.fixture(scope="module")
def model_dir(trained_model_dir: Path) -> Path:
    """A model trained on generated shapes (the suite's ``trained_model_dir``)."""
    return trained_model_dir


@pytest.fixture(scope="module")
def twin(model_dir: Path):
    """The library itself, to check that the page shows what the library answers."""
    from twinnet.infer.twin import Twin

    return Twin.load(model_dir)


@pytest.fixture(scope="module")
def classes(shapes_dir: Path) -> list[list[Path]]:
    return [sorted(d.glob("*.png")) for d in sorted(p for p in shapes_dir.iterdir() if p.is_dir())]


def new_app(monkeypatch: pytest.MonkeyPatch, **env: str):
    """An AppTest of the real script, started as ``twinnet app`` would start it."""
    from streamlit.testing.v1 import AppTest

    for name in appkit.ENV.values():
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(appkit.ENV[key], value)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def upload(at, label: str, name: str, data: bytes) -> None:
    uploader = next(u for u in at.file_uploader if u.label == label)
    uploader.set_value((name, data, "image/png"))


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def captions(at) -> list[str]:
    return [c for img in at.image for c in img.captions]


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def compare(at, left: tuple[str, bytes], right: tuple[str, bytes], explain: bool = False):
    upload(at, "Left image", *left)
    upload(at, "Right image", *right)
    at.run()
    if explain:
        at.checkbox(key="explain").check()
    at.button(key="compare").click()
    at.run()
    assert not at.exception, at.exception
    return at


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- compare


def test_upload_then_compare_shows_the_librarys_verdict(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, twin, classes: list[list[Path]]
) -> None:
    at = new_app(monkeypatch, model=str(model_dir))
    left, right = classes[0][0], classes[0][1]
    upload(at, "Left image", "left.png", left.read_bytes())
    upload(at, "Right image", "right.png", right.read_bytes())
    at.run()
    assert not metrics(at), "nothing is computed before Compare is pressed"
    at.button(key="compare").click().run()
    assert not at.exception and not errors(at)

    expected = twin.compare(left, right)
    shown = metrics(at)
    assert shown["Verdict"] == expected.verdict
    assert shown["Probability of same"] == f"{expected.probability:.1%}"
    assert shown["Threshold"] == f"{twin.spec.threshold:.2f}"
    assert abs(at.progress[0].value - expected.probability * 100) < 1  # whole percent

    # Other widget changes redraw from the session's results: still one computed result.
    at.checkbox(key="explain").check().run()
    at.checkbox(key="explain").uncheck().run()
    assert metrics(at)["Verdict"] == expected.verdict
    assert len(at.session_state["_twinnet_results"]) == 1


def test_explain_overlays_heatmaps_on_both_images(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, classes: list[list[Path]]
) -> None:
    at = new_app(monkeypatch, model=str(model_dir))
    wide = io.BytesIO()
    Image.open(classes[1][0]).resize((128, 64)).save(wide, format="PNG")
    compare(at, ("wide.png", wide.getvalue()), ("b.png", classes[2][0].read_bytes()), explain=True)
    assert not errors(at)
    assert [s.value for s in at.subheader] == ["Where the network looked"]
    assert "wide.png: Grad-CAM" in captions(at) and "b.png: Grad-CAM" in captions(at)
    (result,) = [at.session_state["_twinnet_results"].get(k) for k in _keys(at)]
    assert result.has_cam and np.asarray(result.cam_left).ndim == 2
    # Unticking Explain reuses the result with heatmaps instead of computing another.
    at.checkbox(key="explain").uncheck().run()
    assert "Verdict" in metrics(at) and "wide.png: Grad-CAM" not in captions(at)


def _keys(at) -> list[str]:
    return at.session_state["_twinnet_results"].keys()


def test_samples_in_the_model_directory_can_be_compared(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, classes: list[list[Path]], tmp_path: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for f in model_dir.iterdir():
        if f.is_file():
            (model / f.name).symlink_to(f)
    for cls in (0, 1):
        (model / "samples" / f"class{cls}").mkdir(parents=True)
        shutil.copy(classes[cls][0], model / "samples" / f"class{cls}" / "x.png")
    at = new_app(monkeypatch, model=str(model))
    left, right = at.selectbox(key="left_sample"), at.selectbox(key="right_sample")
    assert left.options == ["(none)", "class0/x.png", "class1/x.png"]
    left.select("class0/x.png")
    right.select("class1/x.png")
    at.run()
    at.button(key="compare").click().run()
    assert not at.exception and not errors(at)
    assert metrics(at)["Verdict"] in ("Same", "Different")
    assert "class0/x.png · 64×64" in captions(at)

    # The samples also make a gallery.
    at.radio(key="mode").set_value("Search a gallery").run()
    at.selectbox(key="query_sample").select("class1/x.png")
    at.radio(key="gallery_source").set_value("All samples").run()
    at.button(key="search").click().run()
    assert not at.exception and not errors(at)
    shown = [c for c in captions(at) if c.startswith("#")]
    assert sorted(c.split()[1] for c in shown) == ["class0/x.png", "class1/x.png"]


# --------------------------------------------------------------------------- gallery


def test_gallery_ranks_uploads_as_the_library_does(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, twin, classes: list[list[Path]]
) -> None:
    at = new_app(monkeypatch, model=str(model_dir))
    at.radio(key="mode").set_value("Search a gallery").run()
    query = classes[0][0]
    gallery = [classes[c][i] for c in range(3) for i in (1, 2)]
    upload(at, "Query image", "query.png", query.read_bytes())
    next(u for u in at.file_uploader if u.label == "Gallery images").set_value(
        [(f"g{i}.png", p.read_bytes(), "image/png") for i, p in enumerate(gallery)]
    )
    at.number_input(key="top_k").set_value(4)
    at.run()
    at.button(key="search").click().run()
    assert not at.exception and not errors(at)

    hits = twin.search(query, gallery, top_k=4)
    expected = [f"#{r} g{h.index}.png · {h.probability:.1%}" for r, h in enumerate(hits, 1)]
    shown = [c for c in captions(at) if c.startswith("#")]
    assert [c.rsplit(" · ", 1)[0] for c in shown] == expected
    assert [s.value for s in at.subheader] == ["Top 4 of 6"]


def test_gallery_from_a_folder_leaves_out_unreadable_images(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, classes: list[list[Path]], tmp_path: Path
) -> None:
    folder = tmp_path / "gallery"
    folder.mkdir()
    for c in range(3):
        shutil.copy(classes[c][3], folder / f"{c}.png")
    (folder / "broken.png").write_bytes(b"not really a png")
    at = new_app(monkeypatch, model=str(model_dir))
    at.radio(key="mode").set_value("Search a gallery").run()
    upload(at, "Query image", "query.png", classes[1][0].read_bytes())
    at.radio(key="gallery_source").set_value("A folder on the app's machine").run()
    at.text_input(key="gallery_folder").input(str(folder)).run()
    assert any("broken.png" in w.value for w in at.warning)
    at.button(key="search").click().run()
    assert not at.exception and not errors(at)
    shown = [c for c in captions(at) if c.startswith("#")]
    assert len(shown) == 3 and all("broken" not in c for c in shown)


def test_a_locked_app_reads_no_folders(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    at = new_app(monkeypatch, model=str(model_dir), locked="1")
    assert "backend_kind" not in {w.key for w in at.radio}
    at.radio(key="mode").set_value("Search a gallery").run()
    assert at.radio(key="gallery_source").options == ["Upload images"]
    assert "in process, model" in at.sidebar.info[0].value


# --------------------------------------------------------------------------- errors


def test_unreadable_upload_is_an_error_in_the_page(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, classes: list[list[Path]]
) -> None:
    at = new_app(monkeypatch, model=str(model_dir))
    upload(at, "Left image", "holiday.png", b"\x89PNG\r\n\x1a\n but then garbage")
    upload(at, "Right image", "b.png", classes[0][0].read_bytes())
    at.run()
    assert not at.exception
    assert any("holiday.png" in e and "not a readable image" in e for e in errors(at))
    assert at.button(key="compare").disabled


def test_a_model_directory_that_is_not_one_is_an_error(
    monkeypatch: pytest.MonkeyPatch, classes: list[list[Path]], tmp_path: Path
) -> None:
    at = new_app(monkeypatch, model=str(tmp_path / "nothing-here"))
    a = classes[0][0].read_bytes()
    compare(at, ("a.png", a), ("b.png", a))
    assert len(errors(at)) == 1 and "nothing-here" in errors(at)[0]
    assert not metrics(at)


def test_a_server_that_does_not_answer_is_an_error(
    monkeypatch: pytest.MonkeyPatch, classes: list[list[Path]]
) -> None:
    port = closed_port()
    at = new_app(monkeypatch, url=f"http://127.0.0.1:{port}")
    a = classes[0][0].read_bytes()
    compare(at, ("a.png", a), ("b.png", a))
    (message,) = errors(at)
    assert message.startswith(f"cannot connect to http://127.0.0.1:{port}")
    assert not metrics(at)


def test_missing_aws_credentials_are_an_error(
    no_aws: None, monkeypatch: pytest.MonkeyPatch, classes: list[list[Path]], tmp_path: Path
) -> None:
    at = new_app(monkeypatch, endpoint="twin-prod", region="eu-west-1")
    # The endpoint list could not be fetched: said in the sidebar, the typed name still usable.
    (listing,) = [e.value for e in at.sidebar.error]
    assert listing.startswith("cannot list endpoints: no AWS credentials found")
    assert at.selectbox(key="endpoint").value == "twin-prod"
    a = classes[0][0].read_bytes()
    compare(at, ("a.png", a), ("b.png", a))
    assert [e.value for e in at.sidebar.error] == [listing]  # still said, not listed again
    (message,) = [e for e in errors(at) if e != listing]
    assert message.startswith("no AWS credentials found")
    assert not metrics(at)


@pytest.fixture
def moto_sagemaker(monkeypatch: pytest.MonkeyPatch):
    """A real moto server on loopback with one endpoint, and boto3 pointed at it."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        sm = boto3.client("sagemaker", region_name="us-east-1")
        sm.create_model(
            ModelName="twin",
            ExecutionRoleArn="arn:aws:iam::123456789012:role/twinnet",
            PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/twinnet:1"},
        )
        sm.create_endpoint_config(
            EndpointConfigName="twin-config",
            ProductionVariants=[
                {
                    "VariantName": "main",
                    "ModelName": "twin",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.m5.large",
                }
            ],
        )
        from twinnet.aws.sagemaker import TAG_MANAGED

        tags = [{"Key": TAG_MANAGED, "Value": "twinnet"}]
        sm.create_endpoint(EndpointName="twin-staging", EndpointConfigName="twin-config", Tags=tags)
        # Not made by twinnet: not listed, but it can be typed in.
        sm.create_endpoint(EndpointName="other", EndpointConfigName="twin-config")
        yield url
    finally:
        server.stop()


def _queue_result(url: str, probability: float) -> None:
    """moto's sagemaker-runtime answers InvokeEndpoint from this queue."""
    import json

    import requests

    body = {"same": probability >= 0.5, "probability": probability, "logits": [0.0, 1.0],
            "threshold": 0.5, "model": "twin"}  # fmt: skip
    r = requests.post(
        f"{url}/moto-api/static/sagemaker/endpoint-results",
        json={"region": "us-east-1", "results": [{"Body": json.dumps(body)}]},
        timeout=10,
    )
    assert r.status_code == 201


def _set_status(name: str, status: str) -> None:
    """What AWS reports while an endpoint is being created (moto makes them InService at once)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    sagemaker_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].endpoints[name].endpoint_status = status


def test_an_endpoint_not_in_service_is_an_error(
    monkeypatch: pytest.MonkeyPatch, moto_sagemaker, classes: list[list[Path]]
) -> None:
    _set_status("twin-staging", "Creating")
    at = new_app(monkeypatch, endpoint="twin-staging", region="us-east-1")
    box = at.selectbox(key="endpoint")
    assert box.options == ["twin-staging (Creating)"] and box.value == "twin-staging"
    a = classes[0][0].read_bytes()
    compare(at, ("a.png", a), ("b.png", a))
    (message,) = errors(at)
    assert message.startswith(
        "endpoint 'twin-staging' is not in service (Creating); wait until it is InService"
    )
    assert not metrics(at)
    # Once it is in service, the same page (and the same cached client) compares. moto
    # decodes request bodies as UTF-8: a 4x4 BMP whose every byte is below 128 passes.
    _set_status("twin-staging", "InService")
    _queue_result(moto_sagemaker, probability=0.75)
    bmp = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), 100, dtype=np.uint8)).save(bmp, format="BMP", dpi=(1, 1))
    bmp.getvalue().decode("utf-8")
    compare(at, ("a.bmp", bmp.getvalue()), ("b.bmp", bmp.getvalue()))
    assert not errors(at) and metrics(at)["Probability of same"] == "75.0%"
    # The page says which mode the endpoint's config declares.
    captions = [c.value for c in at.caption]
    assert "Answers from SageMaker endpoint twin-staging (us-east-1, realtime mode)." in captions


def test_the_page_names_a_serverless_endpoints_mode(
    monkeypatch: pytest.MonkeyPatch, moto_sagemaker
) -> None:
    import boto3

    sm = boto3.client("sagemaker", region_name="us-east-1")
    sm.create_endpoint_config(
        EndpointConfigName="twin-serverless",
        ProductionVariants=[{"VariantName": "main", "ModelName": "twin",
                             "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5}}],
    )  # fmt: skip
    sm.create_endpoint(EndpointName="twin-serverless", EndpointConfigName="twin-serverless")
    at = new_app(monkeypatch, endpoint="twin-serverless", region="us-east-1")
    captions = [c.value for c in at.caption]
    assert (
        "Answers from SageMaker endpoint twin-serverless (us-east-1, serverless mode)." in captions
    )


def test_an_endpoint_that_does_not_exist_is_an_error(
    monkeypatch: pytest.MonkeyPatch, moto_sagemaker, classes: list[list[Path]]
) -> None:
    at = new_app(monkeypatch, endpoint="twin-gone", region="us-east-1")
    assert at.selectbox(key="endpoint").options == ["twin-gone", "twin-staging"]
    a = classes[0][0].read_bytes()
    compare(at, ("a.png", a), ("b.png", a))
    (message,) = errors(at)
    assert message.startswith("endpoint 'twin-gone' not found in region us-east-1; ")


# --------------------------------------------------------------------------- TorchServe


@pytest.fixture(scope="module")
def torchserve(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``twinnet serve`` of the model on free loopback ports, token auth on, always stopped."""
    from twinnet.engines import server

    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17")
    with pytest.MonkeyPatch.context() as mp:
        # The client finds the token of a local server in the state root, as a user's would.
        mp.setenv("TWINNET_HOME", str(tmp_path_factory.mktemp("twinnet_home")))
        ports = [closed_port() for _ in range(3)]
        info = server.start(
            model_dir,
            port=ports[0],
            management_port=ports[1],
            metrics_port=ports[2],
            auth=True,
            default_workers=1,
        )
        try:
            yield f"http://127.0.0.1:{info.port}"
        finally:
            server.stop(port=info.port)


def test_torchserve_compares_explains_and_searches(
    monkeypatch: pytest.MonkeyPatch, torchserve: str, twin, classes: list[list[Path]]
) -> None:
    at = new_app(monkeypatch, url=torchserve)
    left, right = classes[0][0], classes[0][2]
    compare(at, ("l.png", left.read_bytes()), ("r.png", right.read_bytes()), explain=True)
    assert not errors(at)
    expected = twin.compare(left, right)
    assert metrics(at)["Verdict"] == expected.verdict
    shown = float(metrics(at)["Probability of same"].rstrip("%")) / 100
    assert shown == pytest.approx(expected.probability, abs=0.01)  # the server may run bf16
    assert "l.png: Grad-CAM" in captions(at)

    # Gallery through a remote backend: one comparison per image, ranked.
    at.radio(key="mode").set_value("Search a gallery").run()
    gallery = [classes[0][3], classes[1][3], classes[2][3]]
    upload(at, "Query image", "q.png", left.read_bytes())
    next(u for u in at.file_uploader if u.label == "Gallery images").set_value(
        [(f"g{i}.png", p.read_bytes(), "image/png") for i, p in enumerate(gallery)]
    )
    at.run()
    at.button(key="search").click().run()
    assert not at.exception and not errors(at)
    probs = twin.scores(left, gallery)
    ranked = sorted(range(3), key=lambda i: -probs[i])
    shown_order = [c.split()[1] for c in captions(at) if c.startswith("#")]
    if abs(sorted(probs)[-1] - sorted(probs)[-2]) > 0.02:  # ties may swap under bf16
        assert shown_order[0] == f"g{ranked[0]}.png"
    assert sorted(shown_order) == ["g0.png", "g1.png", "g2.png"]
