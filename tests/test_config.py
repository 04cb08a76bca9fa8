"""Configs: round trips, merged files and overrides, errors that name the key, shipped configs."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from test_training import base_config

from ddkit.config import ConfigError, config_from_dict, config_to_dict, load_config


def test_config_round_trip_and_preset_override(tmp_path):
    cfg = config_from_dict(base_config(tmp_path))
    assert cfg.model.hidden == 32 and cfg.model.dim == 2
    again = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert again == cfg


def test_load_config_merges_files_and_overrides(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text(
        '[model]\npreset = "mlp-2d"\n[data]\nname = "moons"\n[train]\nmax_steps = 5\n'
        "[optim]\nlr = 0.01\n"
    )
    cfg = load_config([f], ["optim.lr=3e-4", "train.batch_size=16", 'data.name="spiral"'])
    assert cfg.optim.lr == 3e-4 and cfg.train.batch_size == 16 and cfg.data.name == "spiral"
    assert cfg.train.max_steps == 5


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("optim", "lr", math.nan, "optim.lr"),
        ("optim", "lrr", 1e-3, "unknown key optim.lrr"),
        ("optim", "lr_schedule", "step", "allowed: constant, cosine, linear"),
        ("optim", "min_lr", 0.1, "optim.min_lr=0.1 must not exceed optim.lr"),
        ("optim", "min_lr", -1.0, "optim.min_lr=-1.0"),
        ("train", "batch_size", 0, "train.batch_size"),
        ("train", "precision", "fp8", "allowed: auto, fp32, bf16"),
        ("diffusion", "prediction", "score", "allowed: eps, x0, v"),
        ("model", "channels", 3, "channels"),
        ("data", "name", "cifar", "cifar"),
    ],
)
def test_bad_config_values_name_the_key(tmp_path, section, key, value, words):
    d = base_config(tmp_path)
    d[section][key] = value
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        config_from_dict(d)


def test_decay_needs_steps_after_the_warm_up(tmp_path):
    d = base_config(tmp_path)
    d["optim"] |= {"lr_schedule": "cosine", "warmup_steps": 10}
    with pytest.raises(ConfigError, match="optim.warmup_steps=10 leaves no steps for the cosine"):
        config_from_dict(d)


def test_config_errors_for_sections_and_overrides(tmp_path):
    d = base_config(tmp_path)
    d["trainer"] = {}
    with pytest.raises(ConfigError, match="unknown section 'trainer'"):
        config_from_dict(d)
    d = base_config(tmp_path)
    del d["train"]["max_steps"]
    with pytest.raises(ConfigError, match="max_steps is required"):
        config_from_dict(d)
    with pytest.raises(ConfigError, match="finite"):
        load_config([], ["optim.lr=nan"])
    with pytest.raises(ConfigError, match="section.key"):
        load_config([], ["lr=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "missing.toml"])
    d = base_config(tmp_path)
    d["diffusion"]["variance"] = "learned_range"
    d["diffusion"]["loss"] = "hybrid"
    with pytest.raises(ConfigError, match="learn_sigma"):
        config_from_dict(d)


def test_replace_keeps_config_frozen(tmp_path):
    cfg = config_from_dict(base_config(tmp_path))
    with pytest.raises(ConfigError):
        replace(cfg.optim, lr=-1.0)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").rglob("*.toml")))
def test_shipped_configs_are_valid(path):
    cfg = load_config([path])
    assert cfg.train.max_steps >= 1
