"""Typed params: the shipped params.yaml validates section by section; a misspelt key, a wrong type,
a non-whole integer, NaN or a missing key is a ConfigError naming the dotted key and the value;
`dvc exp run -S` spellings (8 for 8.0, 1e-06, inf) read as the numbers they are; and what stages
hash is the section as written, so typing changes no params hash."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml

from dpinstruct.io import params as P
from dpinstruct.io.errors import ConfigError
from dpinstruct.io.settings import project
from dpinstruct.io.settings.algorithm2 import Resample
from dpinstruct.io.settings.base import Section
from dpinstruct.io.settings.data import Cleaning, Data, Prepare, PreparePublic
from dpinstruct.io.settings.evaluation import Evaluate, Memorisation
from dpinstruct.io.settings.generation import Generate, TrainGenerator
from dpinstruct.io.settings.privacy import Budget, Datasets, Privacy, Randomness, UserLevel
from dpinstruct.io.settings.rl import DpPpo, RlData

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def params(repo_params) -> dict:
    return copy.deepcopy(repo_params)


def sections(model=project.Settings, prefix=""):
    """(dotted key, Section class) of every section model reachable from the root."""
    for name, field in model.model_fields.items():
        annotation, key = field.annotation, f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, Section):
            yield key, annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields") and annotation is not Datasets:
            yield from sections(annotation, key + ".")


SECTIONS = sorted(sections())


def test_the_shipped_params_validate_as_a_whole():
    settings = project.load(REPO / "params.yaml")
    assert settings.privacy.epsilon == 6.0 and settings.rl.dp_ppo.lora.layers == [28, 29]
    assert settings.datasets.root["imdb"].budget == "rl.privacy"


@pytest.mark.parametrize("key,model", SECTIONS, ids=[k for k, _ in SECTIONS])
def test_every_section_validates_alone_and_keeps_what_was_written(params, key, model):
    found, written = model.from_params(params, key), _at(params, key)
    # what a stage hashes is the section itself, so typing changes no params hash
    assert found.raw is written and P.params_hash(found.raw) == P.params_hash(written)


def _at(params: dict, key: str) -> dict:
    for part in key.split("."):
        params = params[part]
    return params


def leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1]


def fields(model, prefix=""):
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields") and annotation is not Datasets:
            yield from fields(annotation, f"{prefix}{name}.")
        elif annotation is not Datasets:
            yield f"{prefix}{name}"


def test_the_models_and_the_shipped_file_have_the_same_keys(repo_params):
    # extra="forbid" refuses a key the models lack; this catches a model field the file does not show
    # (a default nobody sees), bar a LoRA's optional `layers` (default: every block). datasets' keys
    # are dataset names, not fields.
    written = {k for k in leaves(repo_params) if not k.startswith("datasets.")}
    modelled = set(fields(project.Settings))
    assert written <= modelled and {k for k in modelled - written if not k.endswith(".lora.layers")} == set()


def test_every_param_is_read_by_a_stage(repo_params):
    # each leaf of params.yaml is among a dvc.yaml stage's `params` (itself or a section holding it),
    # so a change to it re-runs what reads it; audit.* is read by `dpinstruct audit`, not a stage
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = set()
    for stage in stages.values():
        for entry in stage.get("do", stage).get("params", []):
            declared |= set(entry) if isinstance(entry, dict) else {entry}
    unread = [k for k in leaves(repo_params) if not k.startswith("audit.")
              and not any(k == d or k.startswith(d + ".") for d in declared)]
    assert unread == []


# --- refusals: each names the dotted key, what it must be and the value -----------------------------

@pytest.mark.parametrize("section,key,value,message", [
    # a misspelt key is refused, never ignored
    ("prepare", "min_tokns", 2, r"prepare\.min_tokns: unknown key \(a misspelling\?\), got 2; the keys here are "
                                r"min_tokens, max_tokens"),
    ("rl.dp_ppo.lora", "layer", [28], r"rl\.dp_ppo\.lora\.layer: unknown key .*got \[28\]"),
    # wrong types
    ("prepare", "dedup_casefold", "yes", r"prepare\.dedup_casefold: must be true or false, got 'yes'"),
    ("prepare", "test_share", "0.1", r"prepare\.test_share: must be a finite number, got '0\.1'"),
    ("prepare", "test_share", True, r"prepare\.test_share: must be a finite number, got True"),
    ("prepare", "seed", "0", r"prepare\.seed: must be an integer >= 0, got '0'"),
    ("data", "private_path", 5, r"data\.private_path: must be a file path, got 5"),
    ("data", "private_path", "  ", r"data\.private_path: must be a file path, got '  '"),
    ("privacy", "secure_mode", 1, r"privacy\.secure_mode: must be true or false, got 1"),
    ("rl.dp_ppo", "partition", "all", r"rl\.dp_ppo\.partition: must be one of sft, ppo, got 'all'"),
    ("rl.data", "partitions", [0.5, 0.5], r"rl\.data\.partitions: must be a mapping of params, got \[0\.5, 0\.5\]"),
    ("train_generator", "bf16", "yes", r"train_generator\.bf16: must be auto, true or false, got 'yes'"),
    ("rl.dp_sft.lora", "target_modules", "q_proj", r"rl\.dp_sft\.lora\.target_modules: must be a list, got 'q_proj'"),
    # non-whole integers
    ("generate", "n", 2.7, r"generate\.n: must be an integer >= 1, got 2\.7"),
    ("rl.dp_ppo.lora", "layers", [28, 29.5], r"rl\.dp_ppo\.lora\.layers\[1\]: must be an integer >= 0, got 29\.5"),
    # NaN passes every range check by comparison, so it is refused by type
    ("cluster", "explained_variance", math.nan, r"cluster\.explained_variance: must be a finite number in \(0, 1\], "
                                                r"got nan"),
    ("privacy", "epsilon", math.nan, r"privacy\.epsilon: must be a number, or \.inf for a non-private run, got nan"),
    ("privacy", "delta", math.inf, r"privacy\.delta: must be a finite number, got inf"),
    # ranges
    ("generate", "top_p", 1.5, r"generate\.top_p: must be a finite number in \(0, 1\], got 1\.5"),
    ("prepare_public", "size", "all", r"prepare_public\.size: must be an integer >= 1 or null, got 'all'"),
    ("rlhf.rlhf_ppo", "rollouts", 1, r"rlhf\.rlhf_ppo\.rollouts: must be an integer >= 2, got 1"),
])
def test_a_bad_value_is_refused_by_dotted_key_type_and_value(params, section, key, value, message):
    _at(params, section)[key] = value
    with pytest.raises(ConfigError, match=r"^params\.yaml, " + message):
        project.load_params(params)
    top = section.split(".")[0] if section.split(".")[0] not in ("rl", "rlhf") else ".".join(section.split(".")[:2])
    with pytest.raises(ConfigError, match=message):  # the stage reading the section alone refuses it too
        project.model_at(top).from_params(params, top)


@pytest.mark.parametrize("section,key,message", [
    ("cluster", "k", r"cluster\.k: missing \(must be an integer >= 1\)"),
    ("privacy", "epsilon", r"privacy\.epsilon: missing \(must be a number, or \.inf for a non-private run\)"),
    ("rl.dp_sft", "lora", r"rl\.dp_sft\.lora: missing \(must be a mapping of params\)"),
])
def test_a_missing_key_is_named(params, section, key, message):
    del _at(params, section)[key]
    with pytest.raises(ConfigError, match=r"^params\.yaml, " + message):
        project.load_params(params)


def test_a_missing_or_unknown_section_is_named(params):
    del params["histogram"]
    with pytest.raises(ConfigError, match=r"^params\.yaml, histogram: missing"):
        project.load_params(params)
    with pytest.raises(ConfigError, match=r"^params\.yaml, rl\.dp_sft: missing: params\.yaml has no such section"):
        Budget.from_params({"rl": {}}, "rl.dp_sft")
    params["histogram"], params["histgram"] = {"sigma": 10.0}, {"sigma": 10.0}
    with pytest.raises(ConfigError, match=r"^params\.yaml, histgram: unknown key"):
        project.load_params(params)


def test_cross_key_rules_name_the_key():
    rules = {"min_tokens": 2.0, "max_tokens": 128, "dedup_casefold": True, "ngram_dedup_n": 10}
    assert Cleaning.from_params({"prepare": rules}).min_tokens == 2
    with pytest.raises(ConfigError, match=r"prepare\.min_tokens: 200 exceeds prepare\.max_tokens 128"):
        Cleaning.from_params({"prepare": {**rules, "min_tokens": 200}})
    base = {**rules, "seed": 0, "test_share": 0.1, "val_share": 0.05}
    with pytest.raises(ConfigError, match=r"prepare: test_share and val_share must be > 0 with a sum below 1"):
        Prepare.from_params({"prepare": {**base, "test_share": 0.96}})
    with pytest.raises(ConfigError, match=r"prepare\.test_size: is no longer a param"):
        Prepare.from_params({"prepare": {**base, "test_size": 500}})
    with pytest.raises(ConfigError, match=r"rl\.data\.partitions: need positive shares of sft and ppo summing to 1"):
        RlData.read({"rl": {"data": {"partitions": {"sft": 0.5, "ppo": 0.6}}}}, "partitions")


def test_datasets_name_budget_sections(params):
    params["datasets"]["imdb"]["budget"] = "rl.dp_sft"
    with pytest.raises(ConfigError, match=r"datasets\.imdb\.budget: must name a budget section .* got 'rl\.dp_sft'"):
        project.load_params(params)
    assert type(project.read_section(params, "rl.privacy")) is Budget
    assert type(project.read_section(params, "privacy")) is Privacy


# --- what stays accepted -------------------------------------------------------------------------

def test_whole_floats_are_integers_and_ints_are_floats(params):
    # `dvc exp run -S` may write 500.0 for an int param, and writes 8 where the file has 8.0
    params["generate"].update(n=500.0, seed=0.0)
    params["train_generator"].update(lr=1, clip_norm=2)
    gen, train = Generate.from_params(params), TrainGenerator.from_params(params)
    assert (gen.n, gen.seed) == (500, 0) and type(gen.n) is int and type(gen.seed) is int
    assert (train.lr, train.clip_norm) == (1.0, 2.0) and type(train.lr) is float


@pytest.mark.parametrize("written,read", [(8, 8.0), (6.0, 6.0), (math.inf, math.inf), (".inf", math.inf),
                                          ("inf", math.inf), ("Infinity", math.inf), ("+inf", math.inf)])
def test_epsilon_is_a_number_or_infinity(params, written, read):
    # `-S privacy.epsilon=8` writes the int 8; `-S privacy.epsilon=inf` the string "inf": both as before
    params["privacy"]["epsilon"] = written
    found = Privacy.from_params(params)
    assert found.epsilon == read and type(found.epsilon) is float
    assert found.epsilon == P.as_float(written)  # the spellings the ledger and sweep read back


@pytest.mark.parametrize("bad", ["six", "-inf ish", None, True, math.nan, "nan"])
def test_anything_else_is_not_an_epsilon(params, bad):
    params["rl"]["privacy"]["epsilon"] = bad
    with pytest.raises(ConfigError, match=rf"rl\.privacy\.epsilon: must be a number, or \.inf .*got {bad!r}"):
        Budget.from_params(params, "rl.privacy")


def test_the_exponent_form_dvc_writes_is_a_number(params):
    # `dvc exp run -S privacy.delta=1e-6` writes 1e-06, which YAML 1.1 (PyYAML) reads as a string
    params["privacy"]["delta"] = yaml.safe_load("delta: 1e-06")["delta"]
    assert params["privacy"]["delta"] == "1e-06" and Privacy.from_params(params).delta == 1e-6
    params["histogram"]["sigma"] = "12.5"  # a quoted number is not a number
    with pytest.raises(ConfigError, match=r"histogram\.sigma: must be a finite number, got '12\.5'"):
        project.load_params(params)


def test_optional_keys_default_as_the_code_did(params):
    del params["resample"]["target_size"], params["memorisation"]["max_release_matches"]
    del params["privacy"]["key_file"], params["privacy"]["secure_mode"], params["prepare_public"]["size"]
    assert Resample.from_params(params).target_size is None
    assert Memorisation.from_params(params).max_release_matches is None
    assert PreparePublic.from_params(params).size is None
    assert Randomness.from_params(params) == Randomness(key_file=None, secure_mode=False)
    assert Evaluate.from_params(params).num_buckets == "auto"


def test_a_subset_checks_only_its_keys_and_single_keys_are_read_alone(params):
    # prepare_public reads prepare's cleaning rules only; prepare's own seed is not its business
    params["prepare"]["seed"] = "bad"
    assert Cleaning.from_params(params).raw == {k: params["prepare"][k] for k in Cleaning.model_fields}
    with pytest.raises(ConfigError, match=r"prepare\.seed"):
        Prepare.from_params(params)
    params["user_level"]["max_records_per_user"] = 0
    assert UserLevel.read(params, "enabled") is False
    assert DpPpo.read(params, "new_tokens", "top_p") == (24, 1.0)
    with pytest.raises(ConfigError, match=r"^params\.yaml, data\.private_path: missing \(must be a file path\)"):
        Data.read({"data": {}}, "private_path")


def test_a_copy_with_new_values_hashes_its_new_values(params):
    gen = Generate.from_params(params)
    base = gen.model_copy(update={"n": 7})
    assert base.n == 7 and base.raw == {**params["generate"], "n": 7} and gen.raw is params["generate"]
