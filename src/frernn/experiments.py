"""config.yaml blocks -> grid of resolved run specs, deduplicated runs and run directories."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from frernn.errors import FrernnError
from frernn.spec import DEFAULT_SPEC, deep_merge, resolve, run_id, run_spec_schema

GENERIC_NOTEBOOK = "experiment"  # notebooks/experiment.ipynb: the template of any block
GRAPHS_PAGE = "fig3"  # the top-level config key drawing graphs without training
DATASET_SIZES = {  # (train, test, pixels): fixes per-job memory and the cost model
    "mnist": (60_000, 10_000, 784),
    "fashion_mnist": (60_000, 10_000, 784),
    "cifar10": (50_000, 10_000, 3072),
}


@dataclass(frozen=True)
class Cell:
    """One configuration as a target shows it: a table row x dataset column x grid point."""

    block: str
    row: str | None
    method: str
    paper_dataset: str
    grid: tuple[tuple[str, Any], ...]
    run_id: str


@dataclass(frozen=True)
class Run:
    """One configuration to train (once, whatever the number of targets using it)."""

    run_id: str
    owner: str
    spec: dict[str, Any]


@dataclass(frozen=True)
class Page:
    """One table or figure: results/<name>.csv, its notebook, figure and report section."""

    name: str
    notebook: str  # notebooks/<notebook>.ipynb: a paper notebook or the generic template
    description: str
    output: str  # what results/<name>.csv holds (a block's ``output``, or ``graphs``)

    @property
    def generic(self) -> bool:
        """Drawn by the generic template (summary, accuracy per epoch, sweep plot)."""
        return self.notebook == GENERIC_NOTEBOOK


@dataclass
class Plan:
    """Everything the workflow trains and aggregates for one config and scale."""

    scale: str
    substitute: str | None
    seeds: list[int]
    blocks: dict[str, dict[str, Any]]
    cells: dict[str, list[Cell]] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    graphs: dict[str, Any] = field(default_factory=dict)
    runtime_safety: float = 3.0

    def run(self, rid: str) -> Run:
        """The run with id ``rid`` (a clear error for an id the config does not produce)."""
        if rid not in self.runs:
            raise FrernnError(f"run {rid!r} is not part of the configured experiments")
        return self.runs[rid]

    def run_dir(self, rid: str, seed: int) -> str:
        """``runs/<owner>/<run_id>/seed<k>``, relative to the results directory."""
        return f"runs/{self.run(rid).owner}/{rid}/seed{seed}"

    def spec_text(self, rid: str, seed: int) -> str:
        """The YAML spec file of one (configuration, seed) job."""
        return yaml.safe_dump({**self.run(rid).spec, "seed": seed}, sort_keys=False)

    def mem_mb(self, rid: str) -> int:
        """Memory of the training job of ``rid``: the whole dataset as float32, twice, + 1.5 GB."""
        n_train, n_test, pixels = DATASET_SIZES[self.run(rid).spec["dataset"]]
        return int(1500 + 2 * (n_train + n_test) * pixels * 4 / 1e6)

    def runtime(self, rid: str, device: str) -> int:
        """Time limit (minutes) of the training job of ``rid``: estimate x safety + 5."""
        estimate = cpu_seconds if device == "cpu" else gpu_seconds
        return math.ceil(self.runtime_safety * estimate(self.run(rid).spec) / 60) + 5

    def targets(self, default_only: bool = False) -> list[str]:
        """Names of the aggregated CSVs: ``runs``, one per block, ``fig3``."""
        blocks = [b for b, cfg in self.blocks.items() if cfg["target"] or not default_only]
        return ["runs", *blocks, GRAPHS_PAGE]

    def pages(self) -> list[Page]:
        """Every table and figure of the default target, in config order, then the graphs."""
        pages = [
            Page(name, cfg["notebook"], cfg.get("description", name), cfg["output"])
            for name, cfg in self.blocks.items()
            if cfg["target"]
        ]
        for page in pages:
            if page.generic and page.output != "table":
                raise FrernnError(
                    f"config experiments.{page.name}: the generic notebook draws summary "
                    f"tables; output {page.output!r} needs a notebook of its own (key 'notebook')"
                )
        graphs = self.graphs.get("description", "adjacency of the residual and an AGT graph")
        return [
            *pages,
            Page(GRAPHS_PAGE, self.graphs.get("notebook", GRAPHS_PAGE), graphs, "graphs"),
        ]

    def page(self, name: str) -> Page:
        """The page called ``name`` (a clear error for a name the config does not define)."""
        found = {p.name: p for p in self.pages()}
        if name not in found:
            raise FrernnError(f"no table or figure {name!r} (one of: {', '.join(found)})")
        return found[name]

    def run_ids(self, target: str) -> list[str]:
        """Run ids a target needs (``runs``: those of every default target)."""
        if target == "runs":
            ids = [c.run_id for b in self.targets(True)[1:-1] for c in self.cells[b]]
        else:
            ids = [c.run_id for c in self.cells.get(target, [])]
        return list(dict.fromkeys(ids))

    def metrics_files(self, target: str, root: str = "results") -> list[str]:
        """The metrics.json of every (configuration, seed) job behind ``target``."""
        return [
            f"{root}/{self.run_dir(rid, seed)}/metrics.json"
            for rid in self.run_ids(target)
            for seed in self.seeds
        ]

    def datasets(self) -> list[str]:
        """Datasets the configured runs train on."""
        return sorted({run.spec["dataset"] for run in self.runs.values()})


def _as_parts(spec: Any) -> list[dict[str, Any]]:
    """A spec in config.yaml is a mapping or a list of mappings merged in order."""
    if spec is None:
        return []
    return list(spec) if isinstance(spec, list) else [spec]


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    """``('ep.beta', 0.1)`` -> ``{'ep': {'beta': 0.1}}``."""
    nested: Any = value
    for part in reversed(dotted.split(".")):
        nested = {part: nested}
    return nested


def grid_points(axes: list[dict[str, list[Any]]]) -> Iterator[dict[str, Any]]:
    """Product over axes; the keys of one axis vary together (zipped, equal lengths)."""
    zipped = []
    for axis in axes:
        lengths = {len(values) for values in axis.values()}
        if len(lengths) != 1:
            raise FrernnError(f"grid axis {sorted(axis)}: the zipped lists differ in length")
        n = lengths.pop()
        zipped.append([{k: v[i] for k, v in axis.items()} for i in range(n)])
    for combo in itertools.product(*zipped):
        yield {k: v for point in combo for k, v in point.items()}


def thin(axis: dict[str, list[Any]], points: int | None) -> dict[str, list[Any]]:
    """At most ``points`` values of a (zipped) grid axis, evenly spaced, both ends kept."""
    n = len(next(iter(axis.values())))
    if points is None or n <= points:
        return axis
    keep = sorted({round(i * (n - 1) / (points - 1)) for i in range(points)})
    return {key: [values[i] for i in keep] for key, values in axis.items()}


def column(dotted: str) -> str:
    """Table column of a grid key: its last component (``ep.beta`` -> ``beta``)."""
    return dotted.rsplit(".", 1)[-1]


def _floats(value: Any, schema: dict[str, Any]) -> Any:
    """Ints where the run-spec schema asks for a number become floats: 1 and 1.0 are one run."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _floats(v, props.get(k, {})) for k, v in value.items()}
    options = schema.get("oneOf", [schema])
    if isinstance(value, list):
        items = next((o["items"] for o in options if o.get("type") == "array"), {})
        return [_floats(v, items) for v in value]
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and any(o.get("type") == "number" for o in options):
        return float(value)
    return value


def canonical(spec: dict[str, Any]) -> dict[str, Any]:
    """Reset keys a run ignores to their defaults, so equal runs get equal run ids."""
    spec = _floats(spec, run_spec_schema())
    model, defaults = spec["model"], DEFAULT_SPEC["model"]
    if spec["method"] != "ep":
        spec["ep"] = copy.deepcopy(DEFAULT_SPEC["ep"])
    if model["kind"] == "conv":
        keep = ("kind", "channels", "feedback")
        spec["model"] = {k: model[k] if k in keep else v for k, v in defaults.items()}
    else:
        model["channels"] = list(defaults["channels"])
        if model["topology"] != "agt":
            model["agt_p"] = defaults["agt_p"]
    diagnostics = spec["diagnostics"]
    if not (diagnostics["dynamics"] or diagnostics["trajectory"]):
        diagnostics["samples"] = DEFAULT_SPEC["diagnostics"]["samples"]
    return spec


@dataclass(frozen=True)
class _Context:
    """What turns a paper spec into the spec actually run: scale and dataset substitution."""

    scale: str
    scale_spec: dict[str, Any]
    substitute: str | None
    substitution: dict[str, Any]
    sweep_points: int | None = None

    def run_spec(self, paper: dict[str, Any]) -> dict[str, Any]:
        spec = deep_merge(paper, self.scale_spec)
        if self.substitute:
            adapt = _merge([self.substitution.get(paper["dataset"]), {"dataset": self.substitute}])
            spec = deep_merge(spec, adapt)
        spec = canonical(resolve({**spec, "scale": self.scale}))
        spec.pop("seed")
        return spec


def _merge(parts: list[Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        for piece in _as_parts(part):
            merged = deep_merge(merged, piece)
    return merged


def _expand_row(name: str, block: dict[str, Any], row: dict[str, Any], ctx: _Context, plan: Plan):
    """Cells (and new runs) of one row of a block: datasets x grid points."""
    where = f"experiments.{name}" + (f" row {row['label']!r}" if row.get("label") else "")
    axes = list(block.get("grid", [])) + list(row.get("grid", []))
    axes = [thin(axis, ctx.sweep_points) for axis in axes]
    keys = {k for axis in axes for k in axis}
    if len({column(k) for k in keys}) != len(keys):
        raise FrernnError(f"config {where}: two grid keys share a column name")
    for dataset in block.get("datasets", [None]):
        for point in grid_points(axes):
            parts = [block.get("base"), block.get("by_dataset", {}).get(dataset), row.get("spec")]
            parts += [row.get("by_dataset", {}).get(dataset)]
            parts += [_nest(k, v) for k, v in point.items()]
            parts += [{"dataset": dataset}] if dataset else []
            try:
                paper = resolve(_merge(parts))
                spec = ctx.run_spec(paper)
            except FrernnError as exc:
                raise FrernnError(f"config {where}: {exc}") from None
            rid = run_id(spec)
            plan.runs.setdefault(rid, Run(rid, name, spec))
            method = row.get("method") or spec["method"].upper()
            grid = tuple((column(k), v) for k, v in point.items())
            try:
                label = row.get("label") or block.get("label", "").format(**dict(grid)) or None
            except (KeyError, ValueError) as exc:
                raise FrernnError(f"config {where}: label names no grid column: {exc}") from None
            yield Cell(name, label, method, paper["dataset"], grid, rid)


def _expand_block(name: str, blocks: dict[str, Any], ctx: _Context, plan: Plan) -> list[Cell]:
    """All cells of block ``name``; a row with ``from: other`` reuses that block's cells."""
    block = blocks[name]
    cells: list[Cell] = []
    for row in block.get("rows") or [{}]:
        source = row.get("from")
        if source is None:
            cells += _expand_row(name, block, row, ctx, plan)
            continue
        if source not in blocks or any("from" in r for r in blocks[source].get("rows") or []):
            raise FrernnError(f"config experiments.{name}: 'from: {source}' names no plain block")
        if source not in plan.cells:
            plan.cells[source] = _expand_block(source, blocks, ctx, plan)
        cells += [replace(c, block=name, row=row.get("label")) for c in plan.cells[source]]
    return cells


def _block_defaults(block: dict[str, Any]) -> dict[str, Any]:
    """A block with its optional keys filled in: a target, a summary table, the generic page."""
    return {"target": True, "output": "table", "notebook": GENERIC_NOTEBOOK, **block}


def build_plan(config: dict[str, Any]) -> Plan:
    """Expand every experiment block of a (schema-validated) workflow config."""
    scale = config["scale"]
    if scale not in config["scales"]:
        known = ", ".join(config["scales"])
        raise FrernnError(f"config scale: {scale!r} is not one of the defined scales ({known})")
    scale_cfg = config["scales"][scale]
    substitute = config.get("dataset_substitute")
    ctx = _Context(
        scale,
        scale_cfg.get("spec", {}),
        substitute,
        config.get("substitution", {}),
        scale_cfg.get("sweep_points"),
    )
    blocks = {name: _block_defaults(block) for name, block in config["experiments"].items()}
    seeds = list(config["seeds"])[: scale_cfg.get("seeds", len(config["seeds"]))]
    plan = Plan(scale, substitute, seeds, blocks, graphs=dict(config.get(GRAPHS_PAGE, {})))
    plan.runtime_safety = config.get("runtime_safety", plan.runtime_safety)
    for name in blocks:
        if name not in plan.cells:
            plan.cells[name] = _expand_block(name, blocks, ctx, plan)
    plan.cells = {name: plan.cells[name] for name in blocks}
    return plan


def _sizes(spec: dict[str, Any]) -> tuple[int, int, int]:
    """Training and test samples a run sees per epoch, and the dataset's pixels per image."""
    n_train, n_test, pixels = DATASET_SIZES[spec["dataset"]]
    train = spec["train"]
    return (
        min(n_train, train["train_subset"] or n_train),
        min(n_test, train["test_subset"] or n_test),
        pixels,
    )


def gpu_seconds(spec: dict[str, Any]) -> float:
    """Estimated wall clock of one run on one GPU, fitted to the published times (SPEC §6)."""
    n_train, n_test, pixels = _sizes(spec)
    batch = spec["train"]["batch_size"]
    model, ep = spec["model"], spec["ep"]
    if model["kind"] == "conv":
        step = 0.66e-3 * len(model["channels"]) * (1.8 if pixels > 784 else 1.0)
        forward = 1.6e-3 * len(model["channels"])
    else:
        step = 0.152e-3 * (model["width"] / 64) ** 0.75 * (batch / 500) ** 0.2
        forward = 1.5e-3 * model["depth"]
    if spec["method"] == "ep":
        per_train, per_test = (ep["T"] + ep["K"]) * step + 1.84e-3, ep["T"] * step
    else:
        per_train, per_test = forward, forward / 3
    batches = math.ceil(n_train / batch), math.ceil(n_test / batch)
    return spec["train"]["epochs"] * (batches[0] * per_train + batches[1] * per_test)


def cpu_seconds(spec: dict[str, Any]) -> float:
    """Estimated wall clock of one run on one CPU core (sample x step x layer costs, measured)."""
    n_train, n_test, pixels = _sizes(spec)
    model, ep = spec["model"], spec["ep"]
    if model["kind"] == "conv":
        layers = len(model["channels"]) * (1.8 if pixels > 784 else 1.0)
        unit = 250e-6 * layers
    else:
        unit = 1.2e-6 * model["depth"] * (model["width"] / 64) ** 1.5
    if spec["method"] == "ep":
        work = n_train * (ep["T"] + ep["K"]) + n_test * ep["T"]
    else:
        work = 3 * n_train + n_test
    return spec["train"]["epochs"] * unit * work


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU now, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
