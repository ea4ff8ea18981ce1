"""The engine interface and its registry: every engine is found by name and implements it all,
and an option of one engine given to another is refused before anything starts."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from twinnet.cli import main
from twinnet.engines.base import Engine
from twinnet.engines.registry import DEFAULT_ENGINE, ENGINES, engine_names, get_engine
from twinnet.errors import TwinnetError

pytestmark = pytest.mark.unit


def test_the_registry_lists_torchserve_first():
    assert engine_names() == ("torchserve", "ray") and DEFAULT_ENGINE == "torchserve"


@pytest.mark.parametrize("name", list(ENGINES))
def test_every_engine_implements_the_whole_interface(name: str):
    if name == "ray":
        pytest.importorskip("ray.serve")
    engine = get_engine(name)
    assert isinstance(engine, Engine) and not inspect.isabstract(type(engine))
    assert engine.name == name and engine.title and engine.unit
    assert get_engine(name) is engine  # one instance per engine


def test_an_unknown_engine_names_the_choices():
    with pytest.raises(TwinnetError, match="'triton'.*torchserve or ray"):
        get_engine("triton")


def test_ray_options_with_torchserve_are_refused_before_starting(tmp_path: Path, capsys):
    code = main(["serve", str(tmp_path), "--replicas", "2", "--port", "9"])
    assert code != 0
    assert "--replicas, --autoscale and --address go with --engine ray" in capsys.readouterr().err


def test_engine_choices_come_from_the_registry(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--engine", "triton"])
    assert "choose from torchserve, ray" in capsys.readouterr().err.replace("'", "")
