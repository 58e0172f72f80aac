"""The layout rules (dpinstruct/tools/layout.py) hold on the project, and fail on deliberately mis-placed
modules; dvc.yaml is the single record of lineage and agrees with the stage modules."""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import yaml

from dpinstruct.tools import layout

REPO = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# A `foreach` stage (embed@pool, embed@train, ...) is checked through its `do` template.
DVC = {name: stage.get("do", stage) for name, stage in RAW.items()}


def test_every_stage_runs_its_own_module_which_is_a_dep():
    for name, stage in DVC.items():
        assert stage["cmd"] in (f"python -m stages.{name}", f"python -m stages.{name} ${{key}}"), name
        assert f"stages/{name}.py" in stage["deps"], f"{name}: its script must be a dep of its own stage"
        module = importlib.import_module(f"stages.{name}")
        assert callable(getattr(module, "main", None)), name
        assert len((REPO / f"stages/{name}.py").read_text().splitlines()) < 150, f"{name}: keep stage modules small"


def test_every_stage_declares_its_privacy_class():
    for name, stage in RAW.items():
        for item in stage["foreach"].values() if "foreach" in stage else [None]:
            privacy = stage.get("do", stage).get("meta", {}).get("privacy")
            privacy = item["privacy"] if item and privacy == "${item.privacy}" else privacy
            assert privacy in {"private", "dp", "public"}, name


def test_the_project_keeps_its_layout_rules():
    assert layout.problems(REPO) == []


@pytest.fixture
def copy(tmp_path):
    """A copy of the project's code and dvc.yaml, to mis-place modules in."""
    for name in ("stages", "dpinstruct"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    assert layout.problems(tmp_path) == []
    return tmp_path


def test_a_helper_in_stages_is_caught(copy):
    (copy / "stages/helpers.py").write_text("def useful():\n    return 1\n")
    assert layout.problems(copy) == ["stages/helpers.py is not a stage in dvc.yaml: library code belongs in dpinstruct/"]


def test_a_library_module_importing_a_stage_is_caught(copy):
    (copy / "dpinstruct/text/upward.py").write_text("from stages import prepare\n")
    assert layout.problems(copy) == ["dpinstruct/text/upward.py imports stages: the library never imports a stage"]


def test_a_stage_importing_another_stage_is_caught(copy):
    path = copy / "stages/resample.py"
    path.write_text(path.read_text().replace("import logging\n", "import logging\n\nfrom stages import cluster\n", 1))
    assert "stages/resample.py imports the stage module stages/cluster.py" in layout.problems(copy)


def test_library_code_a_stage_imports_without_a_dep_is_caught(copy):
    # resample starts using the text filters (and, through them, nothing else new): dvc.yaml must follow
    path = copy / "stages/resample.py"
    path.write_text(path.read_text().replace("import logging\n", "import logging\n\nfrom dpinstruct.text import filters\n", 1))
    assert layout.problems(copy) == ["stage resample: imports dpinstruct/text/filters.py, which no dep in dvc.yaml covers"]
    # a transitive import counts too: a module the stage already imports starts importing another
    lib = copy / "dpinstruct/embeddings/resampling.py"
    lib.write_text(lib.read_text().replace("import numpy as np\n", "import numpy as np\n\nfrom dpinstruct.text import stats\n", 1))
    assert "stage resample: imports dpinstruct/text/stats.py, which no dep in dvc.yaml covers" in layout.problems(copy)


def test_code_deps_are_exactly_the_import_closure():
    # not only covering: a dep the code no longer imports re-runs the stage for nothing
    assert layout.write_code_deps(REPO, check=True) == [], "run `dpinstruct deps` to rewrite them"


def test_the_deps_writer_restores_a_dropped_dep_and_drops_a_stale_one(copy):
    text = (copy / "dvc.yaml").read_text()
    assert "deps: [stages/resample.py, dpinstruct/embeddings, dpinstruct/io, " in text
    (copy / "dvc.yaml").write_text(text.replace("deps: [stages/resample.py, dpinstruct/embeddings, dpinstruct/io, ",
                                                "deps: [stages/resample.py, dpinstruct/io, dpinstruct/text, ", 1))
    assert layout.write_code_deps(copy, check=True) == ["resample"]
    assert layout.write_code_deps(copy) == ["resample"]
    assert (copy / "dvc.yaml").read_text() == text and layout.problems(copy) == []


def test_code_deps_are_whole_packages_and_cover_a_new_sibling_module(copy):
    assert layout.code_deps(copy, "resample") == ["stages/resample.py", "dpinstruct/embeddings", "dpinstruct/io"]
    # a new module in a package the stage already depends on needs no edit of dvc.yaml
    (copy / "dpinstruct/embeddings/extra.py").write_text("X = 1\n")
    lib = copy / "dpinstruct/embeddings/resampling.py"
    lib.write_text(lib.read_text().replace("import numpy as np\n", "import numpy as np\n\nfrom dpinstruct.embeddings import extra\n", 1))
    assert layout.write_code_deps(copy, check=True) == [] and layout.problems(copy) == []


def test_flow_lists_wrap_and_quote_templated_items():
    lines = layout.flow_list("deps", ["stages/x.py", "${item.input}"] + [f"data/{i:03d}.parquet" for i in range(12)], "    ")
    assert all(len(line) <= layout.DEPS_WIDTH for line in lines) and len(lines) > 1
    assert yaml.safe_load("\n".join(line.strip() for line in lines))["deps"][1] == "${item.input}"


def test_a_stage_without_its_module_is_caught(copy):
    (copy / "stages/cluster.py").unlink()
    assert "stage cluster in dvc.yaml has no module stages/cluster.py" in layout.problems(copy)


def outs(stage: str) -> set[str]:
    return {o if isinstance(o, str) else next(iter(o)) for o in DVC[stage].get("outs", [])}


def test_prepare_outputs_match_dvc_yaml():
    from stages import evaluate, prepare, prepare_public

    assert set(prepare.OUT.values()) | {"metrics/quality/prepare", prepare.METRICS} == outs("prepare")
    assert {prepare_public.OUT, "metrics/quality/prepare_public", prepare_public.METRICS} == outs("prepare_public")
    assert {evaluate.CLUSTER_PLOT, evaluate.LENGTH_PLOT, evaluate.METRICS} == outs("evaluate")
    reads = {p for pair in [evaluate.REFERENCE, *evaluate.SETS.values()] for p in pair}
    assert reads | {evaluate.BUCKETS, evaluate.NOISY} <= set(DVC["evaluate"]["deps"])


def test_top_level_plots_point_at_stage_outputs_or_the_sweep():
    from dpinstruct.tools import sweep

    files = {f for plot in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
             for spec in plot.values() for f in spec["y"]}
    produced = set()
    for name, stage in RAW.items():  # a foreach stage's outputs, for every key
        for key in stage.get("foreach", [None]):
            produced |= {o.replace("${key}", key) if key else o for o in outs(name)}
    orphans = {f for f in files if not any(f == o or f.startswith(o + "/") for o in produced)}
    assert orphans == {sweep.PLOT, sweep.RL_PLOT}


def test_dvc_analytics_off_in_repo_config():
    assert "analytics = false" in (REPO / ".dvc/config").read_text()


def test_embed_sets_and_expected_ledger_entries_match_dvc_yaml():
    # Two lists the stage modules keep in code must follow dvc.yaml, the record of lineage.
    from stages import account, embed

    items = RAW["embed"]["foreach"]
    assert {k: v["input"] for k, v in items.items()} == embed.SETS
    from stages import annotate

    assert {k: v["input"] for k, v in RAW["annotate"]["foreach"].items()} == annotate.SETS
    mechanisms = {f"{name}@{item}" if "foreach" in RAW[name] else name
                  for name, stage in DVC.items() if stage.get("meta", {}).get("dp_mechanism")
                  for item in RAW[name].get("foreach", [None])}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert mechanisms == {stage for stages in account.datasets(params)[1].values() for stage in stages}
    # account reads every mechanism's ledger entry: each one is its dep, so a re-run mechanism re-runs it
    assert {f"metrics/privacy/{m}.json" for m in mechanisms} <= set(DVC["account"]["deps"])
    from stages import dp_count

    assert {k: (v["input"], v["dataset"]) for k, v in RAW["dp_count"]["foreach"].items()} == \
        {k: (c.input.as_posix(), c.dataset) for k, c in dp_count.COUNTED.items()}


def _data_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if not d.startswith(("stages/", "dpinstruct/"))}


def test_every_dp_stage_binds_its_streams_to_every_input_dvc_yaml_declares():
    """A DP stream bound to less than the stage reads would replay the same noise under another
    base model, adapter or reward model (issue: noise shared between two runs): the inputs each
    mechanism passes to its run key are exactly its non-code deps in dvc.yaml."""
    from stages import dp_ppo, dp_reward_model, dp_sft, histogram, train_generator

    bound = {"train_generator": train_generator.INPUTS, "histogram": histogram.INPUTS, "dp_sft": dp_sft.INPUTS,
             "dp_reward_model": dp_reward_model.INPUTS, "dp_ppo": dp_ppo.INPUTS}
    mechanisms = {n for n, s in DVC.items() if s.get("meta", {}).get("dp_mechanism")} - {"dp_count"}
    assert set(bound) == mechanisms
    for name, inputs in bound.items():
        assert {str(p) for p in inputs} == _data_deps(DVC[name]), name
    assert _data_deps(DVC["dp_count"]) == {"${item.input}"}


def test_no_stage_switches_off_the_run_cache():
    # A queued experiment starts in a fresh copy of the commit: a `persist` output (uncached) cannot be
    # restored there, so the stage re-runs, and DVC never uses its run cache for such a stage either.
    # With checkpoints as outputs, `dvc exp run --queue -S cluster.k=32` re-trained the generator.
    for name, stage in DVC.items():
        for section in ("outs", "metrics", "plots"):
            for out in stage.get(section, []):
                spec = out if isinstance(out, str) else next(iter(out.values())) or {}
                assert not (isinstance(spec, dict) and spec.get("persist")), f"{name}: persist output {out}"


def test_the_committed_lock_lists_the_deps_dvc_yaml_declares():
    """A dep removed from dvc.yaml stays in dvc.lock until the stage re-runs, and `dvc status` does
    not say so (hh_prepare kept two such deps): the committed lock must match the declared graph."""
    from dvc.repo import Repo

    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    stale = {}
    with Repo(str(REPO)) as repo:
        for stage in repo.index.stages:
            name = stage.addressing.split(":")[-1]
            declared = {str(d.def_path) for d in stage.deps} - {"params.yaml"}
            locked = {d["path"] for d in lock.get(name, {}).get("deps", [])}
            if name in lock and declared != locked:
                stale[name] = sorted(declared ^ locked)
    assert not stale, f"dvc.lock deps differ from dvc.yaml (run `dvc commit -f <stage>` or dvc repro): {stale}"
