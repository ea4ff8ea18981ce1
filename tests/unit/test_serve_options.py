"""model-config.yaml has one schema, ServeOptions: the archive writes it, and the handler
and the container read it back through it, so what one writes the others see."""

from __future__ import annotations

import zipfile

import pytest
import yaml

from twinnet.container.main import apply_settings
from twinnet.container.settings import read_options, settings_from_env
from twinnet.contract.options import CONFIG_FILE, ServeOptions
from twinnet.engines.torchserve.archive import archive_files, build_archive
from twinnet.errors import TwinnetError

pytestmark = pytest.mark.unit


def test_the_file_round_trips_and_names_torchserves_keys():
    options = ServeOptions(
        batch_size=4, max_batch_delay=0, workers=3, threads=2, response_timeout=30,
        startup_timeout=90, precision="fp32", cache_mb=64, response_format="list",
    )  # fmt: skip
    text = options.to_yaml()
    assert ServeOptions.from_yaml(text) == options
    cfg = yaml.safe_load(text)
    assert {k: cfg[k] for k in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers")} == {
        "batchSize": 4, "maxBatchDelay": 0, "minWorkers": 3, "maxWorkers": 3,
    }  # fmt: skip
    assert (cfg["responseTimeout"], cfg["startupTimeout"]) == (30, 90)
    section = cfg["twinnet"]
    assert (section["threads"], section["precision"], section["cache_mb"]) == (2, "fp32", 64.0)
    assert (section["response_format"], section["plan"]) == ("list", "tuned")
    naive = ServeOptions(plan="torchserve", threads=4, workers=2)
    assert naive.threads is None  # TorchServe's own threads under its plan
    assert ServeOptions.from_yaml(naive.to_yaml()) == naive


def test_absent_keys_mean_the_defaults():
    assert ServeOptions.from_config({}) == ServeOptions()
    assert ServeOptions.from_config(None).response_format == "object"
    older = {"batchSize": 2, "minWorkers": 1, "twinnet": {"precision": "bf16"}}
    assert ServeOptions.from_config(older) == ServeOptions(
        batch_size=2, workers=1, precision="bf16"
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0}, {"batch_size": 257}, {"max_batch_delay": -1}, {"workers": 0},
        {"threads": 0}, {"threads": "many"}, {"response_timeout": 0}, {"precision": "fp8"},
        {"plan": "fast"}, {"response_format": "xml"}, {"cache_mb": -1}, {"batch_size": True},
    ],
)  # fmt: skip
def test_bad_options_are_refused_with_their_name(bad):
    (name,) = bad
    with pytest.raises(TwinnetError, match=name.split("_")[0]):
        ServeOptions(**bad)


def test_a_broken_file_is_refused_as_the_constructor_refuses_it():
    with pytest.raises(TwinnetError, match="precision"):
        ServeOptions.from_config({"twinnet": {"precision": "fp8"}})
    with pytest.raises(TwinnetError, match="batch size"):
        ServeOptions.from_yaml("batchSize: 0\n")
    with pytest.raises(TwinnetError, match="mapping"):
        ServeOptions.from_yaml("- a list\n")
    with pytest.raises(TwinnetError, match="not valid YAML"):
        ServeOptions.from_yaml("batchSize: [\n")


def test_archive_takes_exactly_the_files_archive_files_lists(random_model_dir, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for path in random_model_dir.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    (model / ".hidden").write_text("x")
    (model / CONFIG_FILE).write_text("batchSize: 99\n")  # the archive writes its own
    (model / "sub").mkdir()
    (model / "sub" / "extra.bin").write_bytes(b"x")
    (model / "notes.txt").write_text("kept: a top-level file")
    listed = [p.name for p in archive_files(model)]
    assert listed == sorted({p.name for p in random_model_dir.iterdir()} | {"notes.txt"})
    options = ServeOptions(batch_size=3, workers=1, response_format="list")
    mar = build_archive(model, tmp_path / "store", options=options)
    with zipfile.ZipFile(mar) as z:
        names = {n for n in z.namelist() if not n.startswith("MAR-INF/")}
        assert names == set(listed) | {"handler.py", CONFIG_FILE}
    assert read_options(mar) == options
    with pytest.raises(TwinnetError, match="either options or"):
        build_archive(model, tmp_path / "store", options=options, batch_size=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TwinnetError, match="not a twinnet model directory"):
        archive_files(tmp_path / "empty")


def test_container_settings_keep_what_the_archive_chose(random_model_dir, tmp_path):
    """Environment settings replace their fields only: the rest is the archive's."""
    chosen = ServeOptions(
        batch_size=4, workers=1, threads=1, cache_mb=32, startup_timeout=200,
        response_format="list", plan="tuned",
    )  # fmt: skip
    mar = build_archive(random_model_dir, tmp_path / "store", options=chosen)
    settings = settings_from_env({"TWINNET_BATCH_SIZE": "2", "TWINNET_PRECISION": "FP32"})
    out = apply_settings(mar, settings.overrides, tmp_path / "rewritten")
    expected = ServeOptions(
        batch_size=2, workers=1, threads=1, cache_mb=32, startup_timeout=200,
        response_format="list", precision="fp32",
    )  # fmt: skip
    assert read_options(out) == expected
    back = apply_settings(out, {"response_format": "object"}, tmp_path / "again")
    assert read_options(back).response_format == "object"
    with zipfile.ZipFile(back) as z:
        assert z.read(CONFIG_FILE).startswith(b"# Rewritten by `twinnet container serve`")


def test_container_reads_the_response_format_from_its_environment():
    assert settings_from_env({"TWINNET_RESPONSE_FORMAT": " List "}).overrides == {
        "response_format": "list"
    }
    with pytest.raises(
        TwinnetError, match="TWINNET_RESPONSE_FORMAT='xml': expected object or list"
    ):
        settings_from_env({"TWINNET_RESPONSE_FORMAT": "xml"})
    with pytest.raises(TwinnetError, match="batch size must be between 1 and 256"):
        settings_from_env({"TWINNET_BATCH_SIZE": "1000"})  # refused before anything starts
