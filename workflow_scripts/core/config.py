"""Config validation by JSON schema, canonical config slices, and a model's architecture read
without loading its weights."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from workflow_scripts.core.provenance import canonical_json

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


class ConfigError(ValueError):
    """A config that must not run; the message names every bad key."""


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    """The config schema: ``config/schema.yaml`` plus one fragment per stage in
    ``config/schema.d/*.yaml`` (each a mapping of top-level config keys to their schemas)."""
    path = Path(path)
    schema = yaml.safe_load(path.read_text())
    for fragment in sorted((path.parent / "schema.d").glob("*.yaml")):
        for key, sub in (yaml.safe_load(fragment.read_text()) or {}).items():
            if key in schema["properties"]:
                raise ValueError(f"{fragment}: key {key!r} is already defined in the schema")
            schema["properties"][key] = sub
    return schema


def _fill_defaults(validator_cls):
    """A validator class that also writes schema defaults into the instance."""
    from jsonschema import validators

    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return validators.extend(validator_cls, {"properties": set_defaults})


def describe_error(err, root: str = "config") -> str:
    """One jsonschema error as a line naming the key (``root`` + the error's path) and, where
    it helps, the allowed keys or values."""
    where = root + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in err.path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        pattern = err.schema.get("patternProperties")
        if pattern:
            return f"{where}: key(s) {extra} do not match the allowed name pattern {list(pattern)}"
        return f"{where}: unknown key(s) {extra}; allowed keys: {allowed}"
    if err.validator == "enum":
        return f"{where}: {err.instance!r} is not one of the allowed values {err.validator_value}"
    if err.validator == "oneOf" and all("required" in o for o in err.validator_value):
        keys = [o["required"][0] for o in err.validator_value]
        return f"{where}: needs exactly one of the keys {keys}"
    if err.validator == "propertyNames":
        return f"{where}: {err.message}; allowed names: {err.validator_value}"
    return f"{where}: {err.message}"


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Validate ``config`` against the JSON schema in place (filling defaults) and return it,
    or raise ConfigError listing every problem with the key's path and the allowed values.
    The results root is checked and resolved in place (``results_dir`` normalised, a leading
    ``<results>`` of ``pretrained_dir`` replaced: :mod:`workflow_scripts.core.paths`). The
    stages' cross-field checks run after it in :func:`workflow_scripts.grid.validate`."""
    from jsonschema import Draft202012Validator

    from workflow_scripts.core.paths import resolve_results, results_problems

    schema = schema or load_schema()
    validator = _fill_defaults(Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path)))
    problems = [describe_error(e) for e in errors] or results_problems(config)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return resolve_results(config)


def registry_problems(section: dict, schemas: dict[str, dict], where: str) -> list[str]:
    """Problems of a config section keyed by the names of a registry (similarity metrics,
    pruning strategies): ``section`` maps name -> settings, ``schemas`` maps each registered
    name -> {setting: JSON schema of its value}. Reports unknown names, unknown settings and
    bad values, each naming its key in the schema's own wording."""
    from jsonschema import Draft202012Validator

    problems = []
    unknown = [name for name in section if name not in schemas]
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(schemas)}")
    for name, settings in section.items():
        if name not in schemas:
            continue
        settings, own = settings or {}, schemas[name]
        extra = sorted(set(settings) - set(own))
        if extra:
            problems.append(f"{where}.{name}: unknown key(s) {extra}; allowed keys: {sorted(own)}")
        for key in sorted(set(settings) & set(own)):
            errors = Draft202012Validator(own[key]).iter_errors(settings[key])
            problems += [describe_error(e, f"{where}.{name}.{key}") for e in errors]
    return problems


def model_config(model_cfg: dict) -> dict | None:
    """The architecture of a model registry entry without loading weights, in transformers'
    config keys (``num_hidden_layers``, ``hidden_size``, ``intermediate_size``,
    ``num_attention_heads``, ``conv_dim``, ``conv_kernel``, ...): a ``pretrain`` spec
    translated, a local folder's ``config.json``, or None (a hub id: nothing local to read).
    The one reader of a model's ``config.json``."""
    if "pretrain" in model_cfg:
        p = model_cfg["pretrain"]
        out = {
            "num_hidden_layers": p.get("layers"),
            "hidden_size": p.get("hidden"),
            "num_attention_heads": p.get("heads"),
        }
        if p.get("hidden") is not None:
            out["intermediate_size"] = p.get("ffn", 4 * p["hidden"])
        for key in ("conv_dim", "conv_kernel", "conv_stride"):
            if key in p:
                out[key] = p[key]
        return out
    path = Path(str(model_cfg.get("hf", ""))) / "config.json"
    if path.is_file():
        import json

        return json.loads(path.read_text())
    return None


def model_num_layers(model_cfg: dict) -> int | None:
    """Transformer layer count of a model entry when knowable without loading weights."""
    cfg = model_config(model_cfg)
    if cfg is not None:
        return cfg.get("num_hidden_layers")
    return model_cfg.get("num_layers")


def model_hidden_size(model_cfg: dict) -> int | None:
    """Hidden size of a model entry when knowable without loading weights."""
    cfg = model_config(model_cfg)
    return None if cfg is None else cfg.get("hidden_size")


def cell_json(obj) -> str:
    """The canonical JSON of one cell's config slice, for a rule's ``params``."""
    return canonical_json(obj)
