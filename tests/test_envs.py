"""envs/*.yaml pin the same versions as pyproject.toml (one truth for the environment)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;]+)$")


def _pyproject_pins() -> dict[str, str]:
    data = tomllib.loads(Path("pyproject.toml").read_text())
    deps = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["dev"]
    pins = {}
    for dep in deps:
        m = PIN.match(dep)
        assert m, f"pyproject dependency {dep!r} is not pinned with =="
        pins[m.group(1).lower()] = m.group(2)
    return pins


def test_every_env_pin_matches_pyproject():
    pins = _pyproject_pins()
    envs = sorted(Path("envs").glob("*.yaml"))
    assert len(envs) >= 2
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        assert pip, env
        for dep in pip:
            m = PIN.match(dep)
            assert m, f"{env}: {dep!r} is not pinned with =="
            name, version = m.group(1).lower(), m.group(2)
            expected = pins.get(name)
            assert expected == version, f"{env}: {name}=={version}, pyproject: {expected}"
        assert "python=3.11" in spec["dependencies"]


def test_torch_pair_is_the_known_good_one():
    pins = _pyproject_pins()
    assert pins["torch"] == "2.9.1" and pins["torchaudio"] == "2.9.1"


def test_every_rule_names_an_existing_env():
    for smk in Path("rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().is_file(), (smk, env)
