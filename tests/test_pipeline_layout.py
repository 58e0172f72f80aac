"""dvc.yaml is the single record of lineage: check it agrees with the stage modules."""
from __future__ import annotations

import importlib
from pathlib import Path

import yaml

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


def test_stage_shared_modules_are_deps():
    # A stage importing a shared module must list it, or edits to it would not re-run the stage.
    for name, stage in DVC.items():
        source = (REPO / f"stages/{name}.py").read_text()
        shared = [p.stem for p in (REPO / "stages").glob("*.py")
                  if p.stem not in DVC and p.stem not in {"__init__", "params", "runner", "artifacts", "errors"}]
        for mod in shared:
            if f"stages.{mod} import" in source or f"import {mod}" in source:
                assert f"stages/{mod}.py" in stage["deps"], f"{name} imports stages/{mod}.py but does not depend on it"


def outs(stage: str) -> set[str]:
    return {o if isinstance(o, str) else next(iter(o)) for o in DVC[stage].get("outs", [])}


def test_prepare_outputs_match_dvc_yaml():
    from stages import evaluate, prepare, prepare_public

    assert set(prepare.OUT.values()) | {"metrics/quality/prepare"} == outs("prepare")
    assert {prepare_public.OUT, "metrics/quality/prepare_public"} == outs("prepare_public")
    assert {evaluate.CLUSTER_PLOT, evaluate.LENGTH_PLOT} == outs("evaluate")
    reads = {p for pair in [evaluate.REFERENCE, *evaluate.SETS.values()] for p in pair}
    assert reads | {evaluate.BUCKETS, evaluate.NOISY} <= set(DVC["evaluate"]["deps"])


def test_top_level_plots_point_at_stage_outputs_or_the_sweep():
    from stages import epsilon_sweep

    files = {f for plot in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
             for spec in plot.values() for f in spec["y"]}
    produced = {o for stage in DVC for o in outs(stage)}
    assert files - produced == {epsilon_sweep.PLOT}


def test_dvc_analytics_off_in_repo_config():
    assert "analytics = false" in (REPO / ".dvc/config").read_text()


def test_embed_sets_and_expected_ledger_entries_match_dvc_yaml():
    # Two lists the stage modules keep in code must follow dvc.yaml, the record of lineage.
    from stages import account, embed

    items = RAW["embed"]["foreach"]
    assert {k: v["input"] for k, v in items.items()} == embed.SETS
    mechanisms = {name for name, stage in DVC.items() if stage.get("meta", {}).get("dp_mechanism")}
    assert mechanisms == set(account.EXPECTED)


def test_no_stage_switches_off_the_run_cache():
    # A queued experiment starts in a fresh copy of the commit: a `persist` output (uncached) cannot be
    # restored there, so the stage re-runs, and DVC never uses its run cache for such a stage either.
    # With checkpoints as outputs, `dvc exp run --queue -S cluster.k=32` re-trained the generator.
    for name, stage in DVC.items():
        for section in ("outs", "metrics", "plots"):
            for out in stage.get(section, []):
                spec = out if isinstance(out, str) else next(iter(out.values())) or {}
                assert not (isinstance(spec, dict) and spec.get("persist")), f"{name}: persist output {out}"
