"""Which engine runs the int8 encoder: only one whose agreement with fp32 was measured."""

from __future__ import annotations

import pytest

from twinnet.errors import TwinnetError
from twinnet.infer.int8 import (
    ENGINE_ENV,
    ENGINES,
    Int8Encoder,
    choose_engine,
    installed_engines,
    recorded_engines,
)

BOTH = {"engines": {"openvino": {}, "onnxruntime": {}}}


def test_records_name_the_engines_they_measured_and_older_ones_mean_onnx_runtime():
    assert recorded_engines(BOTH) == ["openvino", "onnxruntime"]  # preference order
    assert recorded_engines({"engines": {"onnxruntime": {}}}) == ["onnxruntime"]
    assert recorded_engines({"file": "encoder.int8.onnx", "agreement": {}}) == ["onnxruntime"]
    assert recorded_engines({}) == []


def test_auto_takes_the_first_installed_engine_that_was_measured(monkeypatch):
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    installed = installed_engines()
    assert installed == [e for e in ENGINES if e in installed]
    assert choose_engine(BOTH) == (installed[0], None)
    assert choose_engine({"agreement": {}}) == ("onnxruntime", None)
    monkeypatch.setenv(ENGINE_ENV, " ONNXRUNTIME ")
    assert choose_engine(BOTH) == ("onnxruntime", None)


def test_an_engine_asked_for_by_hand_still_needs_its_own_figures(monkeypatch):
    monkeypatch.setenv(ENGINE_ENV, "openvino")
    engine, why = choose_engine({"engines": {"onnxruntime": {}}})
    assert engine is None and "measured with onnxruntime, not with openvino" in why
    assert "twinnet quantize" in why
    monkeypatch.setenv(ENGINE_ENV, "tvm")
    engine, why = choose_engine(BOTH)
    assert engine is None and why.startswith(f"{ENGINE_ENV}='tvm' is not one of auto, openvino")


def test_an_unknown_engine_or_an_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(TwinnetError, match="unknown int8 engine 'tvm'"):
        Int8Encoder(tmp_path / "x.onnx", 1, "tvm")
    bad = tmp_path / "encoder.int8.onnx"
    bad.write_bytes(b"not a protobuf graph")
    for engine in installed_engines():
        encoder = Int8Encoder(bad, 1, engine)  # loads in the background ...
        with pytest.raises(TwinnetError, match=f"{engine} cannot load the int8 encoder"):
            encoder.wait()  # ... and says so when joined
