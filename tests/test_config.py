"""Config validation: every bad key is named before any job runs."""

from __future__ import annotations

import copy

import pytest
import yaml

from workflow_scripts.core.config import ConfigError, validate_config
from workflow_scripts.core.provenance import canonical_json, config_hash
from workflow_scripts.grid import validate


@pytest.fixture
def default_config():
    with open("config.yaml") as f:
        return yaml.safe_load(f)


def test_default_config_is_valid_and_gets_defaults(default_config):
    cfg = validate(copy.deepcopy(default_config))
    assert cfg["corpus"]["speakers"] == default_config["corpus"]["speakers"]
    assert cfg["corpus"]["voices"]  # filled from the schema's defaults
    assert cfg["cache"]["batch_size"] >= 1


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"corpuss": {}}, "config: unknown key(s) ['corpuss']"),
        ({"corpus": {"speakrs": 3}}, "config.corpus: unknown key(s) ['speakrs']"),
        ({"corpus": {"speakers": -5}}, "config.corpus.speakers: -5 is less than the minimum"),
        ({"corpus": {"words": ["yes", "maybe"]}}, "config.corpus.words"),
        ({"corpus": {"rate": [200, 100]}}, "config.corpus.rate: range [200, 100] has min > max"),
        ({"corpus": {"validation_percentage": 60, "testing_percentage": 50}}, "no training"),
        ({"outputs": ["similarit"]}, "'similarit' is not one of the allowed values"),
        ({"models": {"m": {"pretrain": {"arch": "bert", "layers": 4, "hidden": 32,
                                        "heads": 2}}}},
         "config.models.m.pretrain.arch: 'bert' is not one of the allowed values"),
        ({"models": {"m": {}}}, "config.models.m: needs exactly one of"),
        ({"models": {"m": {"hf": "a b"}}}, "config.models.m.hf"),
        ({"finetune": {"lr": -1}}, "config.finetune.lr"),
        ({"cache": {"clips": 1}}, "config.cache.clips"),
    ],
)  # fmt: skip
def test_bad_config_names_the_key(default_config, patch, expected):
    cfg = copy.deepcopy(default_config)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    with pytest.raises(ConfigError) as err:
        validate(cfg)  # the schema, then every stage's cross-field checks
    assert expected in str(err.value)


def test_all_problems_are_reported_at_once(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["corpus"]["speakers"] = 0
    cfg["seed"] = -1
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "config.corpus.speakers" in str(err.value) and "config.seed" in str(err.value)


def test_canonical_json_and_hash_ignore_key_order():
    a = {"b": 1, "a": {"y": [1, 2], "x": 0.5}}
    b = {"a": {"x": 0.5, "y": [1, 2]}, "b": 1}
    assert canonical_json(a) == canonical_json(b) == '{"a":{"x":0.5,"y":[1,2]},"b":1}'
    assert config_hash(a) == config_hash(b) != config_hash({**a, "b": 2})
