"""``torchrun --nproc_per_node 2 -m twinnet train``: two CPU processes over gloo."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from twinnet.core.artifacts import load_model_dir

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("head", ["cosine", "concat"])
def test_two_process_training_writes_a_loadable_model(tmp_path, head):
    from twinnet.data.datasets import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", classes=5, per_class=8, size=32)
    out = tmp_path / "model"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "twinnet", "train", str(data), "--out", str(out), "--split", "classes",
        "--valid-pct", "0.4", "--arch", "resnet18", "--size", "32", "--no-pretrained",
        "--frozen-epochs", "0", "--epochs", "1", "--bs", "8", "--epoch-pairs", "64",
        "--valid-pairs", "32", "--workers", "0", "--head", head, "--per-class", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("model directory:") == 1, "only rank 0 writes and reports"
    model, spec = load_model_dir(out)
    assert spec.recipe["world_size"] == 2
    assert not set(spec.split["train_classes"]) & set(spec.split["valid_classes"])
    assert len(spec.split["valid_classes"]) == 2
    assert spec.head == head
    if head == "concat":
        assert spec.metrics["valid_pairs"] == 32
    else:  # fitted on the held-out classes, after training
        assert spec.calibration["pairs"] > 0 and spec.recipe["loss"] == "cosface"
        assert spec.split["calibration_classes"] == spec.split["valid_classes"]
