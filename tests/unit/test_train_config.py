"""``twinnet train``'s options come from TrainConfig's fields: one place for names, help and
defaults, and the parsed command line is exactly the configuration a Python caller builds."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from twinnet.cli import build_parser
from twinnet.train.config import (
    BASE_DEFAULTS,
    PRETRAINED_LR_RANGE,
    RECIPE_DEFAULTS,
    TrainConfig,
    add_arguments,
    from_args,
    resolve_defaults,
)

pytestmark = pytest.mark.unit


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def _help(p: argparse.ArgumentParser) -> dict[str, str]:
    return {a.dest: a.help for a in p._actions if a.help}


def test_every_option_is_a_field_and_says_its_default():
    helps = _help(_parser())
    names = {f.name for f in fields(TrainConfig)}
    assert set(helps) <= names | {"help"}
    for name in ("arch", "bs"):
        assert f"(default {BASE_DEFAULTS[name]})" in helps[name]
    assert f"(default {BASE_DEFAULTS['size']}; a timm backbone's" in helps["size"]
    pre, init, scratch = (RECIPE_DEFAULTS[k] for k in ("pretrained", "init", "scratch"))
    for i, name in enumerate(("frozen_epochs", "epochs", "lr")):
        said = f"(default {pre[i]:g}; with --init {init[i]:g}; from scratch {scratch[i]:g})"
        assert said in helps[name]
    assert (
        f"(default {PRETRAINED_LR_RANGE[0]:g}; with --init or from scratch: --lr)" in helps["lr_lo"]
    )
    assert "(default 0.2)" in helps["valid_pct"] and "(default cosine)" in helps["head"]


def test_the_command_line_is_the_configuration_a_caller_builds():
    args = build_parser().parse_args(
        ["train", "DATA", "--out", "M", "--recipe", "small-grey", "--no-aug", "--epochs", "3",
         "--valid-pct", "0.1", "--lr-find", "--loss", "normface"]
    )  # fmt: skip
    cfg = from_args(args, data=args.data_dir)
    assert cfg == TrainConfig(
        out="M", data="DATA", recipe="small-grey", augment=False, epochs=3, valid_pct=0.1,
        lr_find=True, loss="normface",
    )  # fmt: skip


def test_unset_options_stay_unset_until_resolved():
    cfg = from_args(build_parser().parse_args(["train", "D", "--out", "M"]), data="D")
    assert cfg == TrainConfig(out="M", data="D")
    resolved = resolve_defaults(cfg)
    assert (resolved.lr_lo, resolved.lr_hi) == PRETRAINED_LR_RANGE
    scratch = resolve_defaults(TrainConfig(out="M", pretrained=False))
    assert scratch.lr_lo == scratch.lr_hi == scratch.lr == RECIPE_DEFAULTS["scratch"][2]
