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


def test_installed_packages_are_the_pinned_ones():
    """The environment the tests run in is the one pyproject.toml pins (torch and torchaudio
    must come as a pair: torchaudio's native ops are built against one torch release)."""
    from importlib.metadata import version

    pins = _pyproject_pins()
    assert pins["torchaudio"].split(".")[:2] == pins["torch"].split(".")[:2]
    for name in ("torch", "torchaudio", "transformers", "snakemake", "numpy", "pandas"):
        assert version(name).split("+")[0] == pins[name], name


def test_every_script_rule_names_an_existing_env():
    checked = 0
    for smk in Path("rules").glob("*.smk"):
        for block in re.split(r"\n(?=[ \t]*rule )", smk.read_text()):  # rules under if/else too
            if "script:" not in block:
                continue
            envs = re.findall(r'conda:\s*\n\s*"([^"]+)"', block)
            assert len(envs) == 1, (smk, block[:60])
            assert (smk.parent / envs[0]).resolve().is_file(), (smk, envs[0])
            checked += 1
    assert checked >= 10  # every stage's job rules were seen
