"""`dpinstruct tune` (dpinstruct/tools/tuning.py): both commands run end to end on public data only, in a
scratch project that also holds private files as tripwires, and never open one of them; a table
whose lineage metadata is not public is refused; the per-prompt norms are those DPAdam clips; the
generator-lr runs are calibrated exactly as the real train_generator run."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from dpinstruct import cli
from dpinstruct.io.artifacts import table_metadata, write_parquet
from dpinstruct.io.errors import ConfigError, InputError
from dpinstruct.io.settings.rl import DpPpo
from dpinstruct.models.loading import load_tokenizer
from dpinstruct.rl.data import PROMPT_SCHEMA
from dpinstruct.text.cleaning import SCHEMA
from dpinstruct.tools import tuning

REPO = Path(__file__).resolve().parents[1]
FLAN = REPO / "data/raw/flan_v2_cot/instructions.jsonl"
IMDB_PUBLIC = REPO / "data/raw/imdb/test.parquet"
# Private inputs of the pipeline, present in the scratch project as tripwires.
PRIVATE = ("data/prepared/train.parquet", "data/prepared/val.parquet", "data/prepared/test.parquet",
           "data/rl/prompts.parquet", "data/private/mine.jsonl")
PRIVATE_RAW = (REPO / "data/raw/chatbot_arena", REPO / "data/raw/imdb/train.parquet", REPO / "data/raw/hh_rlhf")

_RECORDING: list | None = None


def _audit(event: str, args) -> None:
    if _RECORDING is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _RECORDING.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # Python-level opens (open, io.open, os.open); an audit hook cannot be removed


@pytest.fixture
def opened(monkeypatch):
    """Every path opened by Python or read by pandas / pyarrow's Parquet readers while the test runs."""
    global _RECORDING
    paths: list[str] = []

    def recording(fn):
        def wrapper(source, *args, **kwargs):
            if isinstance(source, (str, os.PathLike)):
                paths.append(os.fspath(source))
            return fn(source, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(pd, "read_parquet", recording(pd.read_parquet))
    for name in ("read_table", "read_schema", "read_metadata", "ParquetFile"):
        monkeypatch.setattr(pq, name, recording(getattr(pq, name)))
    _RECORDING = paths
    yield paths
    _RECORDING = None


def touched_private(paths: list[str], root: Path) -> list[str]:
    private = {(root / p).resolve() for p in PRIVATE} | {p.resolve() for p in PRIVATE_RAW}
    hits = []
    for p in paths:
        resolved = (root / p).resolve() if not os.path.isabs(p) else Path(p).resolve()
        if any(resolved == q or q in resolved.parents for q in private):
            hits.append(p)
    return hits


def _write(df: pd.DataFrame, path: Path, schema: pa.Schema, privacy: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(pa.Table.from_pandas(df, preserve_index=False), path, schema, table_metadata("test", "x", privacy))


@pytest.fixture
def public_project(tmp_path, monkeypatch, generator_dir, repo_params):
    """A scratch project with small PUBLIC inputs (FLAN rows, public IMDb prompts, a reward model
    fitted on public reviews) and the pipeline's private inputs as tripwires beside them."""
    from dpinstruct.rl import reward

    (tmp_path / "data/models").mkdir(parents=True)
    (tmp_path / "data/models/generator").symlink_to(generator_dir)
    (tmp_path / "data/raw").symlink_to(REPO / "data/raw")
    tok = load_tokenizer(generator_dir)
    flan = pd.read_json(FLAN, lines=True).instruction.head(3000).tolist()
    rows = pd.DataFrame({"id": [f"flan/{i}" for i in range(len(flan))], "instruction": flan, "user_id": None,
                         "n_tokens": [len(t) for t in tok(flan, add_special_tokens=False)["input_ids"]]})
    rows = rows[rows.n_tokens <= 48].head(30)  # rows that fit train_generator.max_seq_len
    assert len(rows) == 30
    _write(rows, tmp_path / tuning.PUBLIC_ROWS, SCHEMA, "public")
    reviews = pd.read_parquet(IMDB_PUBLIC).sample(n=80, random_state=0)
    prompts = pd.DataFrame({"id": reviews.id.astype(str).tolist()[:12], "prompt": reviews.text.tolist()[:12],
                            "prompt_ids": [t[:8] for t in tok(reviews.text.tolist()[:12], add_special_tokens=False)
                                           ["input_ids"]]})
    _write(prompts, tmp_path / tuning.EVAL_PROMPTS, PROMPT_SCHEMA, "public")
    reward.fit(reviews.text.tolist(), reviews.label.to_numpy(), c=4.0, min_df=1).save(tmp_path / tuning.REWARD_DIR)
    for path in PRIVATE:  # private files a careless tuner might pick up: each holds rows and says private
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".parquet"):
            _write(rows.assign(id="private/" + rows.id), target, SCHEMA, "private")
        else:
            target.write_text('{"instruction": "a private row"}\n')
    params = yaml.safe_load(yaml.safe_dump(repo_params))
    params["rl"]["evaluate_rl"]["rows"] = 4  # the prompts evaluate_rl scores are skipped
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_ppo_clip_runs_on_public_prompts_only(public_project, opened):
    out = public_project / "clip.json"
    assert cli.main(["tune", "ppo-clip", "--prompts", "3", "-S", "rl.dp_ppo.new_tokens=3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    q = result["quantiles"]
    assert result["prompts"] == 3 and 0 < q["q10"] <= q["q50"] <= q["q90"]
    assert result["median"] == q["q50"] and result["suggested_clip_norm"] == pytest.approx(q["q90"], rel=0.05)
    assert result["policy"].startswith("base generator alone")  # no data/adapters/dp_sft here
    assert touched_private(opened, public_project) == []
    assert any(p.endswith("eval_prompts.parquet") for p in opened)  # the recorder does see the reads


def test_generator_lr_runs_on_public_rows_only_with_the_real_runs_calibration(public_project, opened, repo_params):
    from dpinstruct.training import dp_generator

    out = public_project / "lr.json"
    # 2 steps (T = round(0.06 / 0.03)); everything else at the defaults
    assert cli.main(["tune", "generator-lr", "--lrs", "2e-3", "1.2e-2", "-S", "train_generator.epochs=0.06",
                     "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["lr"] for r in result["runs"]] == [2e-3, 1.2e-2]
    assert all(np.isfinite(r["heldout_nll"]) and r["train_s"] > 0 for r in result["runs"])
    assert result["best_lr"] == min(result["runs"], key=lambda r: r["heldout_nll"])["lr"]
    assert result["train_rows"] + result["heldout_rows"] == 30 and result["heldout_rows"] > 0
    assert result["plan"]["steps"] == 2
    # the noise of the real run (its DP count at any N~, the count's sigma as its component) at these params
    params = tuning.override(repo_params, ["train_generator.epochs=0.06"])
    real = dp_generator.plan(params, 3828.0, (float(params["dp_count"]["sigma"]), 1.0, 1))
    assert result["plan"]["noise_multiplier"] == real.noise_multiplier
    assert result["plan"]["composed_epsilon"] == real.composed_epsilon
    assert touched_private(opened, public_project) == []
    assert any(p.endswith("public.parquet") for p in opened)


@pytest.mark.parametrize("command,table", [("ppo-clip", tuning.EVAL_PROMPTS), ("generator-lr", tuning.PUBLIC_ROWS)])
def test_a_table_that_is_not_public_is_refused(public_project, capsys, command, table):
    path = public_project / table
    # someone points the public file at private data: same schema, private lineage
    private = pq.read_table(path)
    pq.write_table(private.replace_schema_metadata(table_metadata("imdb_prepare", "x", "private")), path)
    assert cli.main(["tune", command, "--prompts" if command == "ppo-clip" else "--rows", "3"]) == 1
    assert "not 'public'" in capsys.readouterr().err
    with pytest.raises(InputError, match="not 'public'"):
        tuning.read_public("data/prepared/train.parquet")


def test_per_prompt_norms_are_the_gradients_dpadam_clips(generator_dir):
    """The norms equal those of a plain autograd loop over prompts (the gradient of each prompt's
    mean loss over its rollouts), with a non-zero adapter so that every LoRA matrix has a gradient."""
    from opacus import GradSampleModule

    from dpinstruct.io.settings.models import Lora
    from dpinstruct.models.loading import load_generator
    from dpinstruct.models.lora import lora_model
    from dpinstruct.rl import ppo

    lora = Lora(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], layers=[28, 29])
    s = ppo.PPOSettings(rollouts=2, new_tokens=4, temperature=1.0, top_p=1.0, kl_coef=0.05, clip_range=0.2)
    torch.manual_seed(0)
    policy, tok = lora_model(load_generator(generator_dir), lora)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    prompts = [tok(t, add_special_tokens=False)["input_ids"][:5] for t in
               ["This movie was a total", "I went to see this film", "The acting in this one"]]
    keys = ["a", "b", "c"]
    ids, hidden = ppo.rollouts_and_trunk(policy, prompts, s, ppo.rollout_seeds(ppo.public_seed(0), keys, 2), 28)
    old, ref = ppo.old_and_reference_logprobs(policy, hidden, ids, 5, 28)
    adv = ppo.advantages(np.random.default_rng(0).normal(size=len(ids)), ppo.kl_to_reference(old, ref).numpy(), 2,
                         s.kl_coef)
    loss_fn = ppo.ppo_loss(s.clip_range, 5, 28)
    micro = ppo.micro_batches(ids, hidden, old, adv, 2, 2)  # two micro-batches: 2 prompts, then 1
    trainable = [p for p in policy.parameters() if p.requires_grad]
    expected = []
    for i in range(len(prompts)):
        rows = slice(2 * i, 2 * i + 2)
        batch = {"input_ids": ids[rows], "hidden": hidden[rows], "old_logp": old[rows],
                 "advantage": torch.tensor(adv[rows], dtype=torch.float32)}
        grads = torch.autograd.grad(loss_fn(policy, batch).mean(), trainable)
        expected.append(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item())
    gsm = GradSampleModule(policy, batch_first=True, loss_reduction="mean")
    measured = tuning.per_unit_grad_norms(gsm, [p for p in gsm.parameters() if p.requires_grad], micro, loss_fn)
    np.testing.assert_allclose(measured, expected, rtol=1e-4)


def test_the_ppo_settings_are_the_stages(repo_params):
    from stages import dp_ppo

    cfg = DpPpo.from_params(repo_params)
    assert tuning.ppo_settings(cfg) == dp_ppo.settings(cfg)


def test_the_split_is_a_seeded_hash_of_each_id():
    rows = pd.DataFrame({"id": [f"r{i}" for i in range(2000)], "instruction": "x"})
    train, held = tuning.split_public(rows, 0)
    assert 0.12 < len(held) / len(rows) < 0.18 and len(train) + len(held) == len(rows)
    # a row's part depends on its id alone: dropping half the rows moves no other row
    _, held_half = tuning.split_public(rows.iloc[::2], 0)
    assert set(held_half.id) == set(held.id) & set(rows.id.iloc[::2])
    assert set(tuning.split_public(rows, 1)[1].id) != set(held.id)


def test_overrides_name_existing_params(repo_params):
    assert tuning.override(repo_params, ["rl.dp_ppo.new_tokens=8"])["rl"]["dp_ppo"]["new_tokens"] == 8
    assert repo_params["rl"]["dp_ppo"]["new_tokens"] == 24  # a copy
    with pytest.raises(ConfigError):
        tuning.override(repo_params, ["rl.dp_ppo.new_token=8"])
    with pytest.raises(ConfigError):
        tuning.override(repo_params, ["rl.dp_ppo.new_tokens"])
