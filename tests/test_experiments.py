"""Grid expansion, deduplication and run ids of config.yaml (frernn.experiments)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from frernn import experiments
from frernn.errors import FrernnError
from frernn.spec import resolve, run_id

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


def plan_for(**overrides) -> experiments.Plan:
    return experiments.build_plan({**copy.deepcopy(CONFIG), **overrides})


@pytest.fixture(scope="module")
def paper() -> experiments.Plan:
    return plan_for()


def specs(plan: experiments.Plan, block: str) -> list[dict]:
    return [plan.runs[c.run_id].spec for c in plan.cells[block]]


def test_grid_points_zip_within_an_axis_and_multiply_across():
    axes = [{"model.depth": [2, 3], "ep.T": [20, 30]}, {"ep.beta": [0.1, 1, 4]}]
    points = list(experiments.grid_points(axes))
    assert len(points) == 6
    assert points[0] == {"model.depth": 2, "ep.T": 20, "ep.beta": 0.1}
    assert {(p["model.depth"], p["ep.T"]) for p in points} == {(2, 20), (3, 30)}
    with pytest.raises(FrernnError, match="differ in length"):
        list(experiments.grid_points([{"ep.T": [1, 2], "ep.K": [1]}]))


def test_paper_scale_counts(paper):
    counts = {b: len(cells) for b, cells in paper.cells.items()}
    assert counts["table1"] == 8 and counts["table2"] == 28 and counts["tableS1"] == 28
    assert counts["fig4"] == 60 and counts["fig5"] == 14 and counts["figS8"] == 6
    assert counts["fig6"] == 16 + 28 and counts["fig2"] == 4
    assert paper.seeds == [0, 1, 2, 3, 4]
    assert [c.row for c in paper.cells["tableS1"][::7]] == ["L2", "L3", "L5", "L10"]
    assert [c.row for c in paper.cells["figS8"]][:2] == ["P0", "P0.02"]
    assert len(paper.metrics_files("table2")) == 140


def test_shared_configurations_are_one_run(paper):
    s1 = set(paper.run_ids("tableS1"))
    alpha1 = [c for c in paper.cells["fig4"] if dict(c.grid)["alpha"] == 1]
    shared = {c.run_id for c in alpha1 if dict(c.grid)["beta"] != 0.5}  # S1 has no beta 0.5
    assert len(shared) == 12 and shared <= s1 and len({c.run_id for c in alpha1} & s1) == 12
    t_sweep = {c.run_id for c in paper.cells["fig6"] if c.row == "T-sweep"}
    assert len(t_sweep & s1) == 4  # T = 20 = 10 L at L = 2
    depth_sweep = [c.run_id for c in paper.cells["fig6"] if c.row == "depth-sweep"]
    assert depth_sweep == paper.run_ids("tableS1")
    # Table 2's 5-symm and 10-symm EP on MNIST are Table S1 cells; Table 1's conv runs are its own
    t2 = {(c.row, c.paper_dataset): c.run_id for c in paper.cells["table2"]}
    assert t2["5-symm EP", "mnist"] in s1 and t2["10-symm EP", "mnist"] in s1
    assert paper.runs[t2["5-symm EP", "mnist"]].owner == "table2"
    assert not set(paper.run_ids("table1")) & set(paper.run_ids("table2"))
    # the corrected conv block reuses Table 2's true-BP runs and nothing else
    corrected = set(paper.run_ids("conv_corrected"))
    assert corrected & set(paper.run_ids("table2")) == {
        t2["Conv BP", "mnist"],
        t2["Conv BP", "cifar10"],
    }
    assert not corrected & set(paper.run_ids("table1"))
    # Fig. 5 keeps its own runs: diagnostics are part of the configuration
    assert not set(paper.run_ids("fig5")) & s1
    # no configuration twice: distinct run ids are distinct resolved specs
    texts = {json.dumps(r.spec, sort_keys=True) for r in paper.runs.values()}
    assert len(texts) == len(paper.runs)
    jobs = {f for t in paper.targets(default_only=True) for f in paper.metrics_files(t)}
    assert len(jobs) == 5 * len({r for t in paper.targets(True) for r in paper.run_ids(t)}) == 750


def test_layered_protocol_of_spec_section_6(paper):
    for block in ("tableS1", "fig4", "fig5", "figS8", "fig2"):
        for spec in specs(paper, block):
            depth, ep = spec["model"]["depth"], spec["ep"]
            assert (ep["T"], ep["K"]) == (10 * depth, 5 * depth), block
            assert spec["train"] == {**spec["train"], "epochs": 50, "batch_size": 500}
    for c in paper.cells["table2"]:
        spec = paper.runs[c.run_id].spec
        assert spec["dataset"] == c.paper_dataset
        if spec["model"]["kind"] == "layered":
            lr = {"mnist": 1e-3, "cifar10": 2e-4}[c.paper_dataset]
            assert spec["optim"] == {**spec["optim"], "name": "adam", "lr": lr}
            if spec["method"] == "ep":
                rule = {"chain": "fixed", "residual": "accumulate", "agt": "accumulate"}
                assert spec["ep"]["nudge_rule"] == rule[spec["model"]["topology"]]
                assert spec["ep"]["beta"] == 0.1 and spec["ep"]["nudge"] == 0.1
                assert spec["ep"]["T"] == 10 * spec["model"]["depth"]
    assert {s["optim"]["lr"] for s in specs(paper, "figS8")} == {5e-4}
    assert [s["model"]["agt_p"] for s in specs(paper, "figS8")] == [0, 0.02, 0.1, 0.2, 0.5, 1]
    assert all(s["diagnostics"]["dynamics"] for s in specs(paper, "fig5"))
    assert all(s["diagnostics"]["trajectory"] for s in specs(paper, "fig2"))


def test_conv_and_table1_rows(paper):
    t2 = {(c.row, c.paper_dataset): paper.runs[c.run_id].spec for c in paper.cells["table2"]}
    cifar = t2["Conv EP", "cifar10"]
    assert cifar["model"]["channels"] == [32, 64, 128] and cifar["train"]["normalize"]
    assert (cifar["ep"]["T"], cifar["ep"]["K"], cifar["ep"]["beta"]) == (40, 10, 0.01)
    assert cifar["optim"] == {
        "name": "adamw",
        "lr": 2.5e-4,
        "weight_decay": 2e-4,
        "schedule": "cosine",
        "clip": 5.0,
    }
    assert t2["Conv BP", "cifar10"]["optim"]["clip"] is None
    mnist = t2["Conv EP", "mnist"]
    assert mnist["ep"] == {
        **mnist["ep"],
        "T": 20,
        "K": 10,
        "nudge": 0.25,
        "nudge_rule": "recompute",
    }
    assert (mnist["train"]["epochs"], mnist["train"]["batch_size"]) == (40, 128)
    assert mnist["model"]["timing"] == "notebook_table2_mnist"
    assert cifar["model"]["timing"] == "notebook_table2_cifar10"
    t1 = {c.row: paper.runs[c.run_id].spec for c in paper.cells["table1"]}
    conv_ep, conv_bp = t1["Conv EP"], t1["Conv BP"]
    assert conv_ep["model"]["timing"] == "notebook_table1_mnist" and conv_ep["ep"]["nudge"] == 0.1
    assert conv_ep["optim"] == {**conv_ep["optim"], "name": "sgd", "lr": [0.15, 0.35, 0.9]}
    assert conv_bp["method"] == "bp_straight_through"
    assert conv_bp["optim"] == {**conv_bp["optim"], "lr": [0.001, 0.02, 0.4], "weight_decay": 1e-5}
    for spec in (conv_ep, conv_bp):
        assert (spec["train"]["epochs"], spec["train"]["batch_size"]) == (40, 128)
        assert spec["optim"]["weight_decay"] == 1e-5 and spec["diagnostics"]["alignment"]
    corrected = {
        (c.row, c.paper_dataset): paper.runs[c.run_id].spec for c in paper.cells["conv_corrected"]
    }
    assert {s["model"]["timing"] for s in corrected.values()} == {"corrected"}
    assert corrected["Table 1 Conv BP", "mnist"]["method"] == "bp"
    assert corrected["Table 1 Conv EP", "mnist"]["optim"] == conv_ep["optim"]
    assert corrected["Table 2 Conv EP", "cifar10"]["optim"] == cifar["optim"]
    dlr = t1["3HL-512 EP-DLR"]
    assert dlr["optim"]["lr"] == [0.002, 0.2, 0.05, 0.01] and dlr["optim"]["name"] == "sgd"
    assert (dlr["ep"]["T"], dlr["ep"]["K"], dlr["train"]["batch_size"]) == (18, 10, 20)
    assert t1["3HL-512 EP SGD"]["optim"]["lr"] == 0.1 and t1["2HL-512 EP"]["ep"]["T"] == 10
    assert all(s["model"]["width"] == 512 for r, s in t1.items() if not r.startswith("Conv"))
    intended = specs(paper, "table1_dlr_intended")[0]["optim"]["lr"]
    assert intended == [0.2, 0.05, 0.01, 0.002]
    assert "table1_dlr_intended" not in paper.targets(default_only=True)


def test_canonical_run_ids_ignore_unused_keys():
    base = resolve({"model": {"depth": 3}, "ep": {"alpha": 1}})
    assert run_id(experiments.canonical(base)) == run_id(
        experiments.canonical(resolve({"model": {"depth": 3}, "ep": {"alpha": 1.0}}))
    )
    bp = [resolve({"method": "bp", "ep": {"beta": b}}) for b in (0.1, 4)]
    assert len({run_id(experiments.canonical(s)) for s in bp}) == 1
    conv = [
        resolve({"model": {"kind": "conv", "width": w}, "ep": {"nudge_rule": "recompute"}})
        for w in (64, 512)
    ]
    assert len({run_id(experiments.canonical(s)) for s in conv}) == 1


def test_scales_reduce_and_are_recorded():
    smoke = plan_for(scale="smoke")
    assert smoke.seeds == [0, 1]
    assert all(r.spec["scale"] == "smoke" for r in smoke.runs.values())
    assert all(r.spec["train"]["epochs"] == 1 for r in smoke.runs.values())
    assert all(r.spec["train"]["train_subset"] == 256 for r in smoke.runs.values())
    quick = plan_for(scale="quick")
    assert quick.seeds == [0, 1, 2] and len(quick.cells["table2"]) == 28
    assert len(quick.run_ids("runs")) == 124  # 372 runs: make quick's 124 jobs with pack=seeds
    kinds = {r.spec["model"]["kind"]: r.spec["train"]["epochs"] for r in quick.runs.values()}
    assert kinds == {"layered": 3, "conv": 1}
    with pytest.raises(FrernnError, match="scale: 'huge' is not one of"):
        plan_for(scale="huge")


def test_a_scale_sets_each_model_kind_apart():
    scales = {
        "few": {
            "spec": {"train": {"epochs": 3, "test_subset": 500}},
            "by_kind": {"conv": {"train": {"epochs": 1, "train_subset": 100}}},
        }
    }
    plan = plan_for(scales=scales, scale="few")
    by_kind = {kind: [] for kind in ("layered", "conv")}
    for run in plan.runs.values():
        by_kind[run.spec["model"]["kind"]].append(run.spec["train"])
    assert by_kind["conv"] and by_kind["layered"]
    assert all(t["epochs"] == 1 and t["train_subset"] == 100 for t in by_kind["conv"])
    assert all(t["epochs"] == 3 and t["train_subset"] is None for t in by_kind["layered"])
    assert all(t["test_subset"] == 500 for kind in by_kind.values() for t in kind)
    schema = str(ROOT / "workflow/schemas/config.schema.yaml")
    validate({**copy.deepcopy(CONFIG), "scales": scales}, schema)
    with pytest.raises(WorkflowError, match="'mlp' was unexpected"):
        validate({**copy.deepcopy(CONFIG), "scales": {"few": {"by_kind": {"mlp": {}}}}}, schema)


def test_substitution_maps_every_dataset_and_adapts_cifar_conv():
    plan = plan_for(dataset_substitute="fashion_mnist")
    assert plan.datasets() == ["fashion_mnist"]
    cells = {(c.row, c.paper_dataset): plan.runs[c.run_id].spec for c in plan.cells["table2"]}
    conv = cells["Conv EP", "cifar10"]
    assert conv["model"]["channels"] == [32, 64] and not conv["train"]["normalize"]
    assert conv["ep"]["T"] == 40 and conv["optim"]["clip"] == 5.0  # the rest stays CIFAR's
    assert cells["5-symm EP", "cifar10"]["optim"]["lr"] == 2e-4
    assert len(plan.cells["table2"]) == 28 and len(set(plan.run_ids("table2"))) == 28


def test_config_mistakes_name_the_block_and_key():
    config = copy.deepcopy(CONFIG)
    config["experiments"]["figS8"]["grid"] = [{"ep.betta": [0.1]}]
    with pytest.raises(
        FrernnError, match=r"experiments.figS8: invalid run spec: unknown key ep\.betta"
    ):
        experiments.build_plan(config)
    config = copy.deepcopy(CONFIG)
    config["experiments"]["table2"]["rows"][0]["spec"] = {"ep": {"beta": "high"}}
    with pytest.raises(FrernnError, match=r"table2 row '5-symm BP'.*ep.beta"):
        experiments.build_plan(config)
    config = copy.deepcopy(CONFIG)
    config["experiments"]["fig6"]["rows"][1]["from"] = "nope"
    with pytest.raises(FrernnError, match="'from: nope' names no plain block"):
        experiments.build_plan(config)


def test_job_files_and_spec_text(paper):
    rid = paper.run_ids("table2")[0]
    assert paper.run_dir(rid, 3) == f"runs/table2/{rid}/seed3"
    spec = resolve(yaml.safe_load(paper.spec_text(rid, 3)))
    assert spec["seed"] == 3 and run_id(spec) == rid
    with pytest.raises(FrernnError, match="not part of the configured experiments"):
        paper.run("mnist-ep-nothing")


def test_cost_model_matches_published_wall_clocks(paper):
    published = {2: 38.4, 3: 49, 5: 75, 10: 148}  # Table S1 seconds per run
    for c in paper.cells["tableS1"]:
        depth = dict(c.grid)["depth"]
        estimate = experiments.gpu_seconds(paper.runs[c.run_id].spec)
        assert abs(estimate / published[depth] - 1) < 0.25
    rid = paper.run_ids("tableS1")[-1]
    assert paper.runtime(rid, "cpu") > paper.runtime(rid, "cuda") >= 5
    assert paper.mem_mb(paper.run_ids("table2")[1]) > paper.mem_mb(paper.run_ids("table2")[0])


def test_thin_keeps_evenly_spaced_points_with_both_ends():
    from frernn.experiments import thin

    axis = {"model.depth": [2, 3, 5, 10], "ep.T": [20, 30, 50, 100]}
    assert thin(axis, 2) == {"model.depth": [2, 10], "ep.T": [20, 100]}
    assert thin({"b": [1, 2, 3, 4, 5, 6, 7]}, 3) == {"b": [1, 4, 7]}
    assert thin(axis, None) == axis and thin(axis, 4) == axis


@pytest.mark.parametrize("mode", ["seeds", "shape"])
def test_packs_cover_every_run_once_and_share_a_pack_key(paper, mode):
    from frernn.spec import pack_key

    packs = paper.packs(mode)
    packed = [rid for pack in packs for rid in pack.run_ids]
    assert len(packed) == len(set(packed)) and not paper.unpacked_run_ids(packs)
    assert set(packed) == set(paper.runs)
    assert len({pack.pack_id for pack in packs}) == len(packs)
    for pack in packs:
        assert len({pack_key(paper.runs[rid].spec) for rid in pack.run_ids}) == 1
        members = paper.pack_members(pack)
        assert len(members) == 5 * len(pack.run_ids)
        assert members[1]["dir"] == f"results/{paper.run_dir(pack.run_ids[0], 1)}"
        assert yaml.safe_load(members[1]["spec"])["seed"] == 1
    assert paper.packs("none") == []


def test_shape_packs_join_the_beta_sweep_of_one_depth(paper):
    """Table S1's 35 beta x seed runs of one depth are one job, with every other run of that
    shape in the default target (Fig. 4's alpha = 1 row, Table 2's L5 and L10 EP on MNIST)."""
    packs = paper.packs("shape")
    s1 = paper.run_ids("tableS1")
    by_depth = {}
    for pack in packs:
        depths = {dict(c.grid)["depth"] for c in paper.cells["tableS1"] if c.run_id in pack.run_ids}
        if depths:
            assert len(depths) == 1
            by_depth[depths.pop()] = pack
    assert sorted(by_depth) == [2, 3, 5, 10]
    assert all(len(set(s1) & set(p.run_ids)) == 7 for p in by_depth.values())
    t2 = {(c.row, c.paper_dataset): c.run_id for c in paper.cells["table2"]}
    assert t2["10-symm EP", "mnist"] in by_depth[10].run_ids
    assert t2["10-asymm EP", "mnist"] not in by_depth[10].run_ids  # feedback is a shape
    intended = paper.run_ids("table1_dlr_intended")[0]
    alone = [p for p in packs if intended in p.run_ids]  # outside the default target: apart
    assert [p.run_ids for p in alone] == [(intended,)]


def test_seeds_of_one_seed_and_smoke_packs():
    one_seed = plan_for(seeds=[3])
    assert one_seed.packs("seeds") == [] and len(one_seed.unpacked_run_ids([])) == len(
        one_seed.runs
    )
    with pytest.raises(FrernnError, match="config pack: 'all' is not one of auto, none"):
        experiments.resolve_pack("all", "cpu")
    assert experiments.resolve_pack("auto", "cpu") == "none"
    assert experiments.resolve_pack("auto", "cuda") == "shape"
    assert experiments.resolve_pack("seeds", "cuda") == "seeds"


def test_pack_cost_model(paper):
    """A GPU pack of small nets costs one run until its arithmetic fills the GPU; on the CPU a
    pack costs the sum of its members; memory holds the dataset once."""
    rid = paper.run_ids("tableS1")[0]  # L2, 50 epochs
    spec = paper.runs[rid].spec
    one = experiments.gpu_seconds(spec)
    assert experiments.pack_gpu_seconds([spec] * 35) == one
    assert experiments.pack_gpu_seconds([spec] * 5000) > 10 * one
    assert experiments.pack_cpu_seconds([spec] * 35) == pytest.approx(
        35 * experiments.cpu_seconds(spec)
    )
    (pack,) = [p for p in paper.packs("seeds") if p.run_ids == (rid,)]
    assert paper.pack_runtime(pack, "cpu") > 4 * paper.runtime(rid, "cpu") - 20
    assert paper.pack_runtime(pack, "cuda") == paper.runtime(rid, "cuda")
    assert paper.mem_mb(rid) < paper.pack_mem_mb(pack) < 2 * paper.mem_mb(rid)


def test_pages_come_from_the_config_with_the_generic_notebook_by_default(paper):
    pages = paper.pages()
    names = [p.name for p in pages]
    assert names == [b for b, cfg in CONFIG["experiments"].items() if cfg.get("target", True)] + [
        "fig3"
    ]
    assert all(p.notebook == p.name and not p.generic for p in pages if p.name != "conv_corrected")
    assert paper.page("conv_corrected").generic  # a summary table: the generic template draws it
    assert paper.page("fig5").output == "dynamics" and "Fig. 5" in paper.page("fig5").description
    config = copy.deepcopy(CONFIG)
    config["experiments"]["beta_depth4"] = {"base": {"model": {"depth": 4}}}
    config["experiments"]["fig4"]["target"] = False
    own = experiments.build_plan(config)
    page = own.page("beta_depth4")
    assert page.generic and page.notebook == experiments.GENERIC_NOTEBOOK
    assert page.output == "table" and page.description == "beta_depth4"
    assert [p.name for p in own.pages()][-2:] == ["beta_depth4", "fig3"]
    with pytest.raises(FrernnError, match="no table or figure 'fig4'"):
        own.page("fig4")
    config["experiments"]["fig2"].pop("notebook")
    plan = experiments.build_plan(config)  # aggregation needs no page
    with pytest.raises(FrernnError, match="fig2: the generic notebook draws summary tables"):
        plan.pages()


def test_schema_accepts_a_notebook_name_and_refuses_a_path():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    schema = str(ROOT / "workflow/schemas/config.schema.yaml")
    config = copy.deepcopy(CONFIG)
    config["experiments"]["fig4"]["notebook"] = "my_fig4"
    validate(config, schema)
    config["experiments"]["fig4"]["notebook"] = "../elsewhere/fig4.ipynb"
    with pytest.raises(WorkflowError, match="does not match"):
        validate(config, schema)
