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
        "timing": "corrected",
    },
    "ep": {"T": 20, "K": 10, "alpha": 1.0, "beta": 0.01, "nudge": 0.1, "nudge_rule": "fixed"},
    "optim": {"name": "adam", "lr": 1.0e-3, "weight_decay": 0.0, "schedule": "none", "clip": None},
    "train": {
        "epochs": 50,
        "batch_size": 500,
        "train_subset": None,
        "test_subset": None,
        "normalize": False,
        "train_acc": "running",
    },
    "diagnostics": {"dynamics": False, "trajectory": False, "samples": 500, "alignment": False},
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


def format_error(error: jsonschema.ValidationError, root: str = "spec") -> str:
    """One line naming the offending key of a schema violation (``root`` names the top)."""
    where = ".".join(str(p) for p in error.absolute_path) or root
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        prefix = f"{where}." if error.absolute_path else ""
        return f"unknown key {prefix}{extra[0]}" if extra else error.message
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not one of {error.validator_value}"
    return f"{where}: {error.message}"


def integral_floats_to_int(value: Any, schema: dict[str, Any], where: str = "") -> Any:
    """``value`` with integral floats (YAML ``2.0``) made ints where the schema wants an integer;
    a non-integral one is a one-line error naming its key."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {
            k: integral_floats_to_int(v, props.get(k, {}), f"{where}{k}.") for k, v in value.items()
        }
    options = schema.get("oneOf", [schema])
    if isinstance(value, list):
        items = next((o["items"] for o in options if o.get("type") == "array"), {})
        return [integral_floats_to_int(v, items, where) for v in value]
    wants_int = any(o.get("type") == "integer" for o in options)
    wants_number = any(o.get("type") == "number" for o in options)
    if isinstance(value, float) and wants_int and not wants_number:
        if not value.is_integer():
            raise FrernnError(f"invalid run spec: {where[:-1]}: {value!r} is not an integer")
        return int(value)
    return value


def _combination_problem(spec: dict[str, Any]) -> str | None:
    """The first setting that contradicts another one (schema-valid keys that cannot go
    together), as ``key: reason``; None when the combination is sound."""
    model, method, optim = spec["model"], spec["method"], spec["optim"]
    diagnostics = spec["diagnostics"]
    if isinstance(optim["lr"], list) and optim["name"] != "sgd":
        return "optim.lr: per-layer rates need optim.name: sgd"
    if method == "pep" and (problem := _pep_problem(spec)):
        return problem
    if model["kind"] == "layered":
        if method == "fa" and model["feedback"] != "asymmetric":
            return "model.feedback: method fa needs model.feedback: asymmetric"
        if model["timing"] not in ("corrected", []):
            return "model.timing: only the conv net has notebook timings"
        if method == "bp_straight_through":
            return "method: bp_straight_through needs model.kind: conv"
        return None
    if model["topology"] != "chain":
        return "model.topology: the conv net supports only chain"
    if model["feedback"] != "symmetric":
        return (
            "model.feedback: the conv net has no asymmetric variant (EP feeds back through "
            "transposed convolutions, method fa through its own fixed random kernels)"
        )
    if method == "ep" and spec["ep"]["nudge_rule"] != "recompute":
        return "ep.nudge_rule: the conv net uses recompute"
    if diagnostics["dynamics"] or diagnostics["trajectory"]:
        return "diagnostics: dynamics apply to layered nets only"
    return None


def _pep_problem(spec: dict[str, Any]) -> str | None:
    """What a P-EP run cannot have: a graph other than the chain, asymmetric feedback,
    dynamics diagnostics (defined for the FRE-RNN), a zero nudge (its update divides by it)."""
    model, diagnostics = spec["model"], spec["diagnostics"]
    if model["kind"] == "layered" and model["topology"] != "chain":
        return "model.topology: method pep supports only chain"
    if model["feedback"] != "symmetric":
        return "model.feedback: method pep has tied weights"
    if diagnostics["dynamics"] or diagnostics["trajectory"]:
        return "diagnostics: not available for method pep"
    if spec["ep"]["nudge"] <= 0:
        return "ep.nudge: method pep needs a positive nudge (beta)"
    return None


KIND_KEYS = {  # model keys only one kind of net uses
    "layered": ("depth", "width", "topology", "agt_p"),
    "conv": ("channels",),
}


def ignored_keys(spec: dict[str, Any]) -> list[str]:
    """Model keys set away from their default that the spec's kind of net ignores."""
    model, defaults = spec["model"], DEFAULT_SPEC["model"]
    other = "conv" if model["kind"] == "layered" else "layered"
    return [f"model.{k}" for k in KIND_KEYS[other] if model.get(k, defaults[k]) != defaults[k]]


def validate(spec: dict[str, Any]) -> None:
    """Raise FrernnError naming the first problem of a (merged) run spec."""
    errors = sorted(
        jsonschema.Draft202012Validator(run_spec_schema()).iter_errors(spec),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    if errors:
        raise FrernnError(f"invalid run spec: {format_error(errors[0])}")
    problem = _combination_problem(spec)
    if problem:
        raise FrernnError(f"invalid run spec: {problem}")


def resolve(spec: dict[str, Any] | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Defaults + ``spec`` + ``--set`` overrides, validated: the full description of a run."""
    if spec is not None and not isinstance(spec, dict):
        raise FrernnError("invalid run spec: the top level must be a mapping")
    merged = deep_merge(DEFAULT_SPEC, spec or {})
    for assignment in overrides:
        merged = deep_merge(merged, parse_override(assignment))
    merged = integral_floats_to_int(merged, run_spec_schema())
    validate(merged)
    return merged


def load(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Read a YAML/JSON spec file and resolve it; keys the net's kind ignores are refused."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FrernnError(f"spec file not found: {path}") from None
    except IsADirectoryError:
        raise FrernnError(f"spec file {path} is a directory") from None
    except OSError as exc:
        raise FrernnError(f"cannot read spec file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        first_line = str(exc).splitlines()[0]
        raise FrernnError(f"spec file {path} is not valid YAML: {first_line}") from None
    if raw is None:
        raise FrernnError(f"spec file {path} is empty (write {{}} for the all-default spec)")
    return refuse_ignored_keys(resolve(raw, overrides))


def refuse_ignored_keys(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` unchanged, or a one-line error naming a model key its kind of net ignores."""
    unused = ignored_keys(spec)
    if unused:
        kind = spec["model"]["kind"]
        raise FrernnError(f"invalid run spec: {unused[0]}: the {kind} net does not use it")
    return spec


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (lists and scalars are leaves)."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return flat


# Spec keys in which members of one pack may differ (``diagnostics.*``: every key under it);
# everything else must be equal.
PER_RUN_KEYS = (
    "seed",
    "ep.alpha",
    "ep.beta",
    "optim.lr",
    "optim.weight_decay",
    "optim.clip",
    "diagnostics.*",
)


def pack_key(spec: dict[str, Any]) -> tuple:
    """Hashable key: runs with equal keys can be trained as one batched pack.

    It holds every resolved spec value except ``PER_RUN_KEYS`` (seed, alpha, beta, learning
    rate, weight decay, clipping, diagnostics), so dataset, method, model (kind, depth, width,
    topology, feedback, AGT p, channels), T, K, nudge strength and rule, optimiser name and
    schedule, epochs, batch size, subsets, normalisation and scale are shared. Feedback
    matrices and AGT edges are drawn per seed and may differ.
    """
    flat = _flat(spec)  # the dotted leaves, as the checkpoint identity compares
    return tuple(
        (key, json.dumps(value, sort_keys=True))
        for key, value in sorted(flat.items())
        if key not in PER_RUN_KEYS and not key.startswith("diagnostics.")
    )


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Each dotted key whose value differs, as ``key: old -> new`` (missing: ``unset``)."""
    a, b = _flat(old), _flat(new)
    return [
        f"{key}: {a.get(key, 'unset')!r} -> {b.get(key, 'unset')!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key, "unset") != b.get(key, "unset")
    ]


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
