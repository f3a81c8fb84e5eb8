"""The run spec: defaults, ``--set`` overrides, validation and the readable run id."""

from __future__ import annotations

import copy
import hashlib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from frernn.errors import FrernnError

DEFAULT_SPEC: dict[str, Any] = {
    "dataset": "mnist",
    "method": "ep",
    "model": {
        "kind": "layered",
        "depth": 2,
        "width": 64,
        "topology": "chain",
        "feedback": "symmetric",
        "agt_p": 0.2,
        "channels": [32, 64],
    },
    "ep": {"T": 20, "K": 10, "alpha": 1.0, "beta": 0.01, "nudge": 0.1, "nudge_rule": "fixed"},
    "optim": {"name": "adam", "lr": 1.0e-3, "weight_decay": 0.0, "schedule": "none", "clip": None},
    "train": {
        "epochs": 50,
        "batch_size": 500,
        "train_subset": None,
        "test_subset": None,
        "normalize": False,
    },
    "diagnostics": {"dynamics": False, "trajectory": False, "samples": 500},
    "scale": "custom",
    "seed": 0,
}


@cache
def run_spec_schema() -> dict[str, Any]:
    """The JSON schema of a run spec (shipped with the package, reused by the workflow)."""
    text = resources.files("frernn").joinpath("run_spec.schema.yaml").read_text()
    return yaml.safe_load(text)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``update`` merged in recursively (neither argument is modified)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(assignment: str) -> dict[str, Any]:
    """Turn ``'ep.beta=0.1'`` into ``{'ep': {'beta': 0.1}}`` (the value is parsed as YAML)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise FrernnError(f"--set expects key.path=value, got {assignment!r}")
    value = yaml.safe_load(raw) if raw else None
    nested: dict[str, Any] = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def format_error(error: jsonschema.ValidationError) -> str:
    """One line naming the offending key of a schema violation."""
    where = ".".join(str(p) for p in error.absolute_path) or "spec"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        prefix = f"{where}." if error.absolute_path else ""
        return f"unknown key {prefix}{extra[0]}" if extra else error.message
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not one of {error.validator_value}"
    return f"{where}: {error.message}"


def validate(spec: dict[str, Any]) -> None:
    """Raise FrernnError naming the first problem of a (merged) run spec."""
    errors = sorted(
        jsonschema.Draft202012Validator(run_spec_schema()).iter_errors(spec),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    if errors:
        raise FrernnError(f"invalid run spec: {format_error(errors[0])}")
    lr = spec["optim"]["lr"]
    if isinstance(lr, list) and spec["optim"]["name"] != "sgd":
        raise FrernnError("invalid run spec: optim.lr: per-layer rates need optim.name: sgd")
    if spec["model"]["kind"] == "conv" and spec["model"]["topology"] != "chain":
        raise FrernnError("invalid run spec: model.topology: the conv net supports only chain")
    diagnostics = spec["diagnostics"]
    if spec["model"]["kind"] == "conv" and (diagnostics["dynamics"] or diagnostics["trajectory"]):
        raise FrernnError("invalid run spec: diagnostics: dynamics apply to layered nets only")
    if spec["method"] == "pep":
        validate_pep(spec)


def validate_pep(spec: dict[str, Any]) -> None:
    """What a P-EP run cannot have: a graph other than the chain, asymmetric feedback,
    dynamics diagnostics (defined for the FRE-RNN), a zero nudge (its update divides by it)."""
    model, diagnostics = spec["model"], spec["diagnostics"]
    if model["kind"] == "layered" and model["topology"] != "chain":
        raise FrernnError("invalid run spec: model.topology: method pep supports only chain")
    if model["feedback"] != "symmetric":
        raise FrernnError("invalid run spec: model.feedback: method pep has tied weights")
    if diagnostics["dynamics"] or diagnostics["trajectory"]:
        raise FrernnError("invalid run spec: diagnostics: not available for method pep")
    if spec["ep"]["nudge"] <= 0:
        raise FrernnError("invalid run spec: ep.nudge: method pep needs a positive nudge (beta)")


def resolve(spec: dict[str, Any] | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Defaults + ``spec`` + ``--set`` overrides, validated: the full description of a run."""
    if spec is not None and not isinstance(spec, dict):
        raise FrernnError("invalid run spec: the top level must be a mapping")
    merged = deep_merge(DEFAULT_SPEC, spec or {})
    for assignment in overrides:
        merged = deep_merge(merged, parse_override(assignment))
    validate(merged)
    return merged


def load(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Read a YAML/JSON spec file and resolve it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FrernnError(f"spec file not found: {path}") from None
    except yaml.YAMLError as exc:
        first_line = str(exc).splitlines()[0]
        raise FrernnError(f"spec file {path} is not valid YAML: {first_line}") from None
    return resolve(raw, overrides)


def _fmt(value: float) -> str:
    return f"{value:g}"


def config_hash(spec: dict[str, Any]) -> str:
    """Six hex digits identifying everything of a spec except seed and scale."""
    core = {k: v for k, v in spec.items() if k not in ("seed", "scale")}
    return hashlib.sha1(json.dumps(core, sort_keys=True).encode()).hexdigest()[:6]


def run_id(spec: dict[str, Any]) -> str:
    """Readable, stable id of a configuration: ``mnist-ep-L10-w64-residual-symm-...-3f9a2c``."""
    model, ep = spec["model"], spec["ep"]
    if model["kind"] == "conv":
        arch = "conv" + "-".join(str(c) for c in model["channels"])
    else:
        feedback = "symm" if model["feedback"] == "symmetric" else "asym"
        topo = model["topology"] + (f"{_fmt(model['agt_p'])}" if model["topology"] == "agt" else "")
        arch = f"L{model['depth']}-w{model['width']}-{topo}-{feedback}"
    parts = [spec["dataset"], spec["method"], arch]
    if spec["method"] == "ep":
        parts += [f"a{_fmt(ep['alpha'])}", f"b{_fmt(ep['beta'])}", f"T{ep['T']}K{ep['K']}"]
    elif spec["method"] == "pep":
        parts += [f"b{_fmt(ep['nudge'])}", f"T{ep['T']}K{ep['K']}"]
    return "-".join(parts + [config_hash(spec)])
