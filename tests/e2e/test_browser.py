"""The app in a real browser: ``twinnet app`` on loopback, driven by Debian's Chromium.

Uploads two images through the page's file inputs, asks for an explanation, presses
Compare and waits for the verdict; with ``--index``, identifies an upload and waits for the
verdict and the match rows. A screenshot is saved as a test artifact (under
``$TWINNET_ARTIFACTS``, default ``tests/e2e/artifacts/``) whether a test passes or not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(
    os.environ.get("TWINNET_ARTIFACTS") or Path(__file__).resolve().parent / "artifacts"
)
START_TIMEOUT = 180
ANSWER_TIMEOUT = 180


@pytest.fixture(scope="module")
def model_dir(trained_model_dir: Path) -> Path:
    """A model trained on generated shapes (the suite's ``trained_model_dir``)."""
    return trained_model_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"twinnet app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(
        f"twinnet app did not become healthy in {START_TIMEOUT}s:\n{log.read_text()[-3000:]}"
    )


@contextlib.contextmanager
def running_app(args: list[str], log: Path) -> Iterator[str]:
    """``twinnet app ARGS`` on a free loopback port, always stopped afterwards."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINNET_APP_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "twinnet", "app", *args, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


@pytest.fixture
def app_url(model_dir: Path, tmp_path: Path) -> Iterator[str]:
    """``twinnet app --model ...`` on a free loopback port, always stopped afterwards."""
    with running_app(["--model", str(model_dir)], tmp_path / "app.log") as url:
        yield url


@pytest.fixture
def identify_url(random_cosine_dir: Path, shapes_dir: Path, tmp_path: Path) -> Iterator[str]:
    """``twinnet app --model ... --index ...`` with an index of the generated shapes."""
    pytest.importorskip("faiss")
    from twinnet.cli import main

    index = tmp_path / "index"
    build = ["index", "build", str(random_cosine_dir), str(shapes_dir), "--out", str(index)]
    assert main(build) == 0
    args = ["--model", str(random_cosine_dir), "--index", str(index)]
    with running_app(args, tmp_path / "app.log") as url:
        yield url


@pytest.fixture
def browser(tmp_path: Path):
    """Headless Chromium with a fresh profile and nothing talking to the internet."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--window-size=1400,1300",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wide_image(src: Path, dest: Path) -> Path:
    """A 2:1 copy of ``src``: its heatmap must come back 2:1, not squashed to a square."""
    Image.open(src).convert("RGB").resize((192, 96)).save(dest)
    return dest


def test_upload_compare_and_explain_in_chromium(
    app_url: str, browser, shapes_dir: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    first_class = sorted(p for p in shapes_dir.iterdir() if p.is_dir())[0]
    left = wide_image(sorted(first_class.glob("*.png"))[0], tmp_path / "left.png")
    right = sorted(first_class.glob("*.png"))[1]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "app-compare.png"
    wait = WebDriverWait(browser, ANSWER_TIMEOUT)
    try:
        browser.get(app_url)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input[type=file]")) >= 2)
        inputs = browser.find_elements(By.CSS_SELECTOR, "input[type=file]")
        inputs[0].send_keys(str(left))
        inputs[1].send_keys(str(right))

        compare = (By.XPATH, "//button[.//p[normalize-space()='Compare']]")
        wait.until(lambda d: d.find_element(*compare).is_enabled())
        browser.find_element(
            By.XPATH, "//label[.//p[contains(normalize-space(), 'Explain')]]"
        ).click()
        wait.until(ec.element_to_be_clickable(compare)).click()

        verdict = (By.CSS_SELECTOR, "[data-testid='stMetricValue']")
        wait.until(lambda d: d.find_elements(*verdict))
        assert browser.find_elements(*verdict)[0].text in ("Same", "Different")
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "Probability of same" in page and "Threshold" in page
        assert "Traceback" not in page

        # Both heatmaps arrive; the wide one keeps its 2:1 shape (preview and overlay).
        wait.until(lambda d: len(_image_sizes(d)) >= 4)
        ratios = [w / h for w, h in _image_sizes(browser) if h]
        assert sum(abs(r - 2.0) < 0.02 for r in ratios) >= 2, ratios
    finally:
        browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0


def test_identify_an_upload_in_chromium(identify_url: str, browser, shapes_dir: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    query = sorted(sorted(p for p in shapes_dir.iterdir() if p.is_dir())[1].glob("*.png"))[0]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "app-identify.png"
    wait = WebDriverWait(browser, ANSWER_TIMEOUT)
    try:
        browser.get(identify_url)
        mode = (By.XPATH, "//label[.//p[normalize-space()='Identify']]")
        wait.until(ec.element_to_be_clickable(mode)).click()
        wait.until(lambda d: "Image to identify" in d.find_element(By.TAG_NAME, "body").text)
        (upload,) = browser.find_elements(By.CSS_SELECTOR, "input[type=file]")
        upload.send_keys(str(query))

        button = (By.XPATH, "//button[.//p[normalize-space()='Identify']]")
        wait.until(lambda d: d.find_element(*button).is_enabled())
        wait.until(ec.element_to_be_clickable(button)).click()

        verdict = (
            By.XPATH,
            "//*[@data-testid='stAlertContentSuccess' or @data-testid='stAlertContentWarning']",
        )
        wait.until(lambda d: d.find_elements(*verdict))
        said = browser.find_element(*verdict).text
        assert said.startswith("Identified: ") or said.startswith(
            "unknown — no gallery class reaches the threshold"
        ), said
        page = browser.find_element(By.TAG_NAME, "body").text
        rows = [line for line in page.splitlines() if line.startswith("#1 ")]
        assert rows, page
        if said.startswith("Identified: "):
            assert said.removeprefix("Identified: ").split(" · ")[0] == rows[0][3:]
        assert "Traceback" not in page
    finally:
        browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0


def _image_sizes(driver) -> list[tuple[int, int]]:
    """Natural sizes of the page's loaded images (the pixels the app sent, not the layout)."""
    return [
        (int(w), int(h))
        for w, h in driver.execute_script(
            "return Array.from(document.querySelectorAll('[data-testid=stImage] img'))"
            ".filter(i => i.complete && i.naturalWidth > 0)"
            ".map(i => [i.naturalWidth, i.naturalHeight]);"
        )
    ]


def test_artifacts_folder_is_ignored_by_git() -> None:
    """Screenshots must never end up in a commit."""
    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    probe = ARTIFACTS / "app-compare.png"
    rel = probe.relative_to(root) if probe.is_relative_to(root) else None
    if rel is None:
        pytest.skip("TWINNET_ARTIFACTS points outside the repository")
    result = subprocess.run(
        ["git", "check-ignore", "-q", str(rel)], cwd=root, capture_output=True, check=False
    )
    assert result.returncode == 0
