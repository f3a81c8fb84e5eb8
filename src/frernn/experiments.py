"""config.yaml blocks -> grid of resolved run specs, deduplicated runs and run directories."""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema
import yaml

from frernn.errors import FrernnError
from frernn.models.timing import Timing
from frernn.spec import DEFAULT_SPEC, deep_merge, format_error, resolve, run_id, run_spec_schema

GENERIC_NOTEBOOK = "experiment"  # notebooks/experiment.ipynb: the template of any block
GRAPHS_PAGE = "fig3"  # the top-level config key drawing graphs without training
DATASET_SIZES = {  # (train, test, pixels): fixes per-job memory and the cost model
    "mnist": (60_000, 10_000, 784),
    "fashion_mnist": (60_000, 10_000, 784),
    "cifar10": (50_000, 10_000, 3072),
}


RELAXED = ("ep", "pep")  # methods that relax T + K steps per training sample
PEP_SMALL_BATCH = 32
PEP_CPU_FACTORS = {"layered": (2.3, 1.8), "conv": (0.8, 0.6)}  # (batch <= 32, larger)


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


PACK_MODES = ("none", "seeds", "shape")


@dataclass(frozen=True)
class Pack:
    """Runs (with all their seeds) trained by one job: ``frernn train-pack``."""

    pack_id: str
    run_ids: tuple[str, ...]


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
    notes: list[str] = field(default_factory=list)

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

    def packs(self, mode: str) -> list[Pack]:
        """The packed jobs of ``mode`` (none | seeds | shape), over every configured run.

        ``seeds``: each configuration with all its seeds; ``shape``: all configurations sharing
        a ``frernn.spec.pack_key`` (runs of the default target and the others apart). A "pack"
        of one (configuration, seed) stays a plain job. The packs cover every run once whatever
        the target, so each metrics.json has one job (asking for one target trains the whole
        packs its runs are in).
        """
        if mode == "none":
            return []
        from frernn.spec import pack_key

        default = set(self.run_ids("runs"))
        groups: dict[Any, list[str]] = {}
        for rid, run in self.runs.items():
            key = rid if mode == "seeds" else (rid in default, pack_key(run.spec))
            groups.setdefault(key, []).append(rid)
        return [
            Pack(_pack_id(rids, mode), tuple(rids))
            for rids in groups.values()
            if len(rids) * len(self.seeds) > 1
        ]

    def unpacked_run_ids(self, packs: list[Pack]) -> list[str]:
        """Run ids trained one (configuration, seed) per job, besides ``packs``."""
        packed = {rid for pack in packs for rid in pack.run_ids}
        return [rid for rid in self.runs if rid not in packed]

    def pack_members(self, pack: Pack, root: str = "results") -> list[dict[str, str]]:
        """Each member of ``pack`` as ``{"spec": YAML text, "dir": run directory}``."""
        return [
            {"spec": self.spec_text(rid, seed), "dir": f"{root}/{self.run_dir(rid, seed)}"}
            for rid in pack.run_ids
            for seed in self.seeds
        ]

    def pack_mem_mb(self, pack: Pack) -> int:
        """Memory of a packed job: the dataset once, plus every member's own tensors."""
        members = sum(member_mb(self.run(rid).spec) for rid in pack.run_ids) * len(self.seeds)
        return self.mem_mb(pack.run_ids[0]) + math.ceil(members)

    def pack_runtime(self, pack: Pack, device: str) -> int:
        """Time limit (minutes) of a packed job: estimate x safety + 5."""
        specs = [self.run(rid).spec for rid in pack.run_ids for _ in self.seeds]
        estimate = pack_cpu_seconds(specs) if device == "cpu" else pack_gpu_seconds(specs)
        return math.ceil(self.runtime_safety * estimate / 60) + 5

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
    if spec["method"] == "pep":  # P-EP reads T, K and its beta (ep.nudge) only
        kept = {k: spec["ep"][k] for k in ("T", "K", "nudge")}
        spec["ep"] = {**copy.deepcopy(DEFAULT_SPEC["ep"]), **kept}
    elif spec["method"] != "ep":
        spec["ep"] = copy.deepcopy(DEFAULT_SPEC["ep"])
    if model["kind"] == "conv":
        keep = ("kind", "channels", "feedback") + (("timing",) if spec["method"] == "ep" else ())
        spec["model"] = {k: model[k] if k in keep else v for k, v in defaults.items()}
        spec["model"]["timing"] = Timing.parse(spec["model"]["timing"]).spec_value()
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
    by_kind: dict[str, Any] = field(default_factory=dict)

    def run_spec(self, paper: dict[str, Any]) -> dict[str, Any]:
        spec = deep_merge(paper, self.scale_spec)
        spec = deep_merge(spec, self.by_kind.get(paper["model"]["kind"], {}))
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
        scale_cfg.get("by_kind", {}),
    )
    blocks = {name: _block_defaults(block) for name, block in config["experiments"].items()}
    seeds = list(config["seeds"])[: scale_cfg.get("seeds", len(config["seeds"]))]
    plan = Plan(scale, substitute, seeds, blocks, graphs=dict(config.get(GRAPHS_PAGE, {})))
    if len(seeds) < len(config["seeds"]):
        plan.notes.append(
            f"scale {scale} trains seeds {seeds}, the first {len(seeds)} of seeds "
            f"{list(config['seeds'])} (scales.{scale}.seeds: {len(seeds)})"
        )
    plan.runtime_safety = config.get("runtime_safety", plan.runtime_safety)
    for name in blocks:
        if name not in plan.cells:
            plan.cells[name] = _expand_block(name, blocks, ctx, plan)
    plan.cells = {name: plan.cells[name] for name in blocks}
    return plan


def config_error(exc: Exception) -> str:
    """One line for a workflow config mistake: the key a schema violation names, or the
    first line of the error (Snakemake's validate raises it while handling the jsonschema one)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, jsonschema.ValidationError):
        return f"invalid config: {format_error(cause, root='config')}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


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
    """Estimated wall clock of one run on one GPU, fitted to the published times."""
    n_train, n_test, pixels = _sizes(spec)
    batch = spec["train"]["batch_size"]
    model, ep = spec["model"], spec["ep"]
    if model["kind"] == "conv":
        step = 0.66e-3 * len(model["channels"]) * (1.8 if pixels > 784 else 1.0)
        forward = 1.6e-3 * len(model["channels"])
    else:
        step = 0.152e-3 * (model["width"] / 64) ** 0.75 * (batch / 500) ** 0.2
        forward = 1.5e-3 * model["depth"]
    if spec["method"] in RELAXED:  # P-EP: FRE-RNN's step cost (unmeasured on a GPU here)
        per_train, per_test = (ep["T"] + ep["K"]) * step + 1.84e-3, ep["T"] * step
    else:
        per_train, per_test = forward, forward / 3
    batches = math.ceil(n_train / batch), math.ceil(n_test / batch)
    return spec["train"]["epochs"] * (batches[0] * per_train + batches[1] * per_test)


def pep_cpu_factor(spec: dict[str, Any]) -> float:
    """P-EP's CPU time per sample and relaxation step over FRE-RNN EP's on the same layers
    (benchmarks/pep.py): every layer is updated at every step, the output layer too, and small
    batches use the cores less well."""
    small = spec["train"]["batch_size"] <= PEP_SMALL_BATCH
    factors = PEP_CPU_FACTORS[spec["model"]["kind"]]
    return factors[0] if small else factors[1]


def cpu_seconds(spec: dict[str, Any]) -> float:
    """Estimated wall clock of one run on one CPU core (sample x step x layer costs, measured)."""
    n_train, n_test, pixels = _sizes(spec)
    model, ep = spec["model"], spec["ep"]
    if model["kind"] == "conv":
        layers = len(model["channels"]) * (1.8 if pixels > 784 else 1.0)
        unit = 250e-6 * layers
    else:
        unit = 1.2e-6 * model["depth"] * (model["width"] / 64) ** 1.5
    if spec["method"] == "pep":
        unit *= pep_cpu_factor(spec)
    if spec["method"] in RELAXED:
        work = n_train * (ep["T"] + ep["K"]) + n_test * ep["T"]
    else:
        work = 3 * n_train + n_test
    return spec["train"]["epochs"] * unit * work


def _pack_id(run_ids: list[str], mode: str) -> str:
    """A pack's name (also its Snakemake rule's): the first run id, and for ``shape`` packs the
    number of configurations and a digest of all of them."""
    if mode == "seeds":
        name = run_ids[0]
    else:
        digest = hashlib.sha1("\n".join(run_ids).encode()).hexdigest()[:8]
        name = f"{run_ids[0]}-x{len(run_ids)}-{digest}"
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _flops_per_sample(spec: dict[str, Any]) -> float:
    """Floating-point operations of one training sample (every relaxation step, both directions
    of every edge; BP and FA: forward and backward as three forward passes)."""
    pixels = _sizes(spec)[2]
    model, ep = spec["model"], spec["ep"]
    if model["kind"] == "conv":  # 1 channel: 5x5 unpadded convs; 3 channels: 3x3 padded
        colour = pixels > 784
        channels, kernel = (3, 3) if colour else (1, 5)
        side, per_step = math.isqrt(pixels // channels), 0.0
        for out in model["channels"]:
            side = side if colour else side - kernel + 1
            per_step += 2 * side * side * channels * out * kernel * kernel
            side, channels = side // 2, out
        per_step *= 2  # forward and feedback
    else:
        width = model["width"]
        per_step = 4 * model["depth"] * width * width
    steps = (ep["T"] + ep["K"]) if spec["method"] == "ep" else 3
    return per_step * steps


GPU_FLOPS = 20e12  # sustained float32 rate assumed for a packed job (H100 class; unmeasured)


def pack_gpu_seconds(specs: list[dict[str, Any]]) -> float:
    """Estimated wall clock of a pack on one GPU: a small run leaves the GPU mostly idle (its
    time is kernel launches), so a pack costs one run's time until its arithmetic fills the
    GPU, then grows with it: max(one run, all members' FLOPs at ``GPU_FLOPS``)."""
    arithmetic = 0.0
    for spec in specs:
        n_train, n_test, _ = _sizes(spec)
        work = n_train + n_test / 3
        arithmetic += spec["train"]["epochs"] * work * _flops_per_sample(spec) / GPU_FLOPS
    return max(max(gpu_seconds(s) for s in specs), arithmetic)


def pack_cpu_seconds(specs: list[dict[str, Any]]) -> float:
    """Estimated wall clock of a pack on one CPU core: packing saves no arithmetic there."""
    return sum(cpu_seconds(spec) for spec in specs)


def member_mb(spec: dict[str, Any]) -> float:
    """Host memory of one member's own tensors (weights, optimiser state, batch states)."""
    if spec["model"]["kind"] == "conv":
        return 600.0 * (1.8 if _sizes(spec)[2] > 784 else 1.0)  # ~507 MiB peak measured (MNIST)
    model, batch = spec["model"], spec["train"]["batch_size"]
    units = model["depth"] * model["width"]
    params = _sizes(spec)[2] * model["width"] + model["depth"] * model["width"] ** 2
    return 20 + (8 * params + 8 * max(batch, 1000) * units) * 4 / 1e6


def resolve_pack(pack: str, device: str) -> str:
    """``auto`` -> ``none`` on the CPU (packing saves no arithmetic there), ``shape`` on CUDA
    (a pack of small nets costs about one run: chosen by the cost model, unmeasured)."""
    if pack == "auto":
        return "shape" if device == "cuda" else "none"
    if pack not in PACK_MODES:
        raise FrernnError(f"config pack: {pack!r} is not one of auto, {', '.join(PACK_MODES)}")
    return pack


def export_job_environment(device: str, data_dir: str, gpu_slots: int) -> None:
    """Hand device, data directory and GPU slots (frernn.gpu) to the training jobs through
    their environment, not as rule params: Snakemake reruns a job whose params change, and
    these do not change what a run computes."""
    os.environ.update(
        FRERNN_DEVICE=device, FRERNN_DATA_DIR=str(data_dir), FRERNN_GPU_SLOTS=str(gpu_slots)
    )


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU now, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
