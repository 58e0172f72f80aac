"""The generate stage's mechanics, with an adapter the real train_generator DP-trains, in a project
holding NO private data: determinism, resume after a kill, the adapter being applied, the pool's
contract, val_nll against Hugging Face's own loss. On the tiny random generator of the real
architecture and tokenizer (conftest): none of these is about language; the real model's pool is
tested end to end in tests/stages/test_algorithm2_pipeline.py."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from dpinstruct.io.artifacts import Outputs, read_metadata
from dpinstruct.models import sampler
from dpinstruct.models.lora import merged_model
from stages import generate as stage
from stages import generate_base, prepare, train_generator, val_nll
from tests.conftest import run_dp_count, use_private_rows

REPO = Path(__file__).resolve().parents[2]
SMALL = {"n": 20, "batch_size": 8, "max_new_tokens": 16, "drop_truncated": False}


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory, tiny_generator_dir, repo_params) -> Path:
    """A DP adapter trained for 3 steps on 25 shipped private rows (the real train_generator)."""
    return train_adapter(tmp_path_factory, tiny_generator_dir, repo_params)


def train_adapter(tmp_path_factory, generator_dir, repo_params) -> Path:
    root = tmp_path_factory.mktemp("train")
    (root / "data/models").mkdir(parents=True)
    (root / "data/raw").symlink_to(REPO / "data/raw")
    (root / "data/models/generator").symlink_to(generator_dir)
    params = yaml.safe_load(yaml.safe_dump(repo_params))
    use_private_rows(root, params, 40)  # 25 train rows, 6 val rows
    params["privacy"].update(epsilon=6.0, delta=1e-3)
    params["dp_count"]["sigma"] = 4.0  # N~ near the 25 rows: the divisor q x N~ is a real batch
    params["train_generator"].update(sampling_rate=1 / 3, epochs=1.0, checkpoint_every=10, micro_batch_tokens=256)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with Outputs() as out:
            prepare.prepare(params, out)
        run_dp_count("instructions", params)
        with Outputs() as out:
            train_generator.train(params, out)
    finally:
        os.chdir(cwd)
    return root / train_generator.ADAPTER_DIR


def release_project(root: Path, monkeypatch, generator_dir: Path, adapter: Path, repo_params) -> dict:
    """A project with the base model, the adapter and params only: no data/raw, no data/prepared."""
    (root / "data/models").mkdir(parents=True)
    (root / "data/models/generator").symlink_to(generator_dir)
    shutil.copytree(adapter, root / stage.ADAPTER_DIR)
    monkeypatch.chdir(root)
    params = yaml.safe_load(yaml.safe_dump(repo_params))
    params["generate"].update(SMALL)
    return params


@pytest.fixture
def release(tmp_path, monkeypatch, tiny_generator_dir, trained_adapter, repo_params):
    return release_project(tmp_path, monkeypatch, tiny_generator_dir, trained_adapter, repo_params)


def run(params) -> dict:
    with Outputs() as out:
        return stage.generate(params, out)


def pool_digest() -> str:
    return hashlib.sha256(stage.POOL.read_bytes()).hexdigest()


def test_pool_contract_without_private_data(release):
    assert not Path("data/raw").exists() and not Path("data/prepared").exists()
    counts = run(release)
    table = pq.read_table(stage.POOL)
    assert table.schema.names == ["id", "instruction", "n_tokens", "seed", "chunk"]
    assert read_metadata(stage.POOL)["privacy"] == "dp"
    df = table.to_pandas()
    assert len(df) == counts["kept"] > 0 and df.instruction.is_unique and df.id.is_unique
    assert counts["sampled"] == 20 and set(df.chunk) <= {0, 1, 2}  # 20 samples in chunks of 8
    assert (df.seed == df.chunk.map(lambda c: stage.chunk_seed(0, c))).all()
    assert sum(counts[k] for k in ("kept", "truncated", "empty", "too_short", "degenerate", "exact_duplicate")) == 20
    assert (df.n_tokens.between(1, 16)).all() and all(s.strip() == s and s for s in df.instruction)
    assert json.loads(Path(stage.METRICS).read_text()) == counts
    assert json.loads(Path("metrics/quality/generate/pool.json").read_text())["success"]


def test_dvc_stage_reads_no_private_data():
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["generate"]["deps"]
    assert not [d for d in deps if d.startswith(("data/prepared", "data/raw", "${data"))]


def test_deterministic_and_seeded(release):
    run(release)
    first = pool_digest()
    shutil.rmtree(stage.CHUNK_DIR)
    run(release)
    assert pool_digest() == first
    release["generate"]["seed"] = 1
    run(release)
    assert pool_digest() != first


def test_resume_after_a_killed_chunk_gives_the_same_pool(release, monkeypatch):
    run(release)
    uninterrupted = pool_digest()
    shutil.rmtree(stage.CHUNK_DIR)
    stage.POOL.unlink()
    real, calls = sampler.sample, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed in chunk 1")
        return real(*args, **kwargs)

    monkeypatch.setattr(sampler, "sample", dying)
    with pytest.raises(KeyboardInterrupt):
        run(release)
    assert not stage.POOL.exists() and len(list(stage.CHUNK_DIR.glob("*.parquet"))) == 1
    calls.clear()
    monkeypatch.setattr(sampler, "sample", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    run(release)
    assert len(calls) == 2  # chunks 1 and 2 only: chunk 0 came from disk
    assert pool_digest() == uninterrupted


def first_chunk(directory: Path) -> list:
    return pq.read_table(directory / next(p.name for p in sorted(directory.glob("*-00000.parquet")))).column(
        "tokens").to_pylist()


def test_the_trained_adapter_changes_the_samples_and_generate_base_is_the_bare_generator(release, tiny_generator_dir):
    run(release)
    with_adapter = first_chunk(stage.CHUNK_DIR)
    release["generate_base"] = {"n": 12}
    with Outputs() as out:
        counts = generate_base.generate_base(release, out)
    # Same seed and sampler on the bare base model: what generate_base sampled, and the adapter differs.
    from dpinstruct.models.loading import load_generator

    base, tokenizer = load_generator(tiny_generator_dir)
    prompt = tokenizer(release["train_generator"]["prompt"], add_special_tokens=False)["input_ids"]
    bare = sampler.sample(base, prompt, 8, eos_id=tokenizer.eos_token_id, max_new_tokens=16, top_p=0.95,
                           temperature=1.0, generator=torch.Generator().manual_seed(stage.chunk_seed(0, 0)))
    assert first_chunk(generate_base.CHUNK_DIR) == bare != with_adapter
    pool = pq.read_table(generate_base.POOL).to_pandas()
    assert read_metadata(generate_base.POOL)["privacy"] == "public"  # base weights only: no private data
    assert counts["sampled"] == 12 and len(pool) == counts["kept"] and pool.id.str.startswith("b").all()
    assert json.loads(Path(generate_base.METRICS).read_text()) == counts
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["generate_base"]["deps"]
    assert "data/adapters/generator" not in deps and not [d for d in deps if d.startswith(("data/prepared", "data/raw"))]
    model, _ = merged_model(stage.GENERATOR_DIR, stage.ADAPTER_DIR)
    again = sampler.sample(model, prompt, 8, eos_id=tokenizer.eos_token_id, max_new_tokens=16, top_p=0.95,
                            temperature=1.0, generator=torch.Generator().manual_seed(stage.chunk_seed(0, 0)))
    assert with_adapter == again


def test_val_nll_is_the_mean_token_loss_of_hugging_face_on_val(release, trained_adapter, tiny_generator_dir):
    """Independent computation: transformers' own loss (labels, its shift) per record, with and
    without the (unmerged) adapter, against the stage's fused loss on the merged model."""
    from peft import PeftModel

    from dpinstruct.models.loading import load_generator

    Path("data/prepared").mkdir(parents=True)
    shutil.copy(trained_adapter.parents[2] / "data/prepared/val.parquet", "data/prepared/val.parquet")
    release["evaluate"].update(bootstrap=200)
    with Outputs() as out:
        result = val_nll.val_nll(release, out)
    texts = pq.read_table("data/prepared/val.parquet").column("instruction").to_pylist()
    base, tokenizer = load_generator(tiny_generator_dir)
    prompt = tokenizer(release["train_generator"]["prompt"], add_special_tokens=False)["input_ids"]
    expected = {}
    for name, model in (("base", base), ("dp", PeftModel.from_pretrained(load_generator(tiny_generator_dir)[0],
                                                                          str(stage.ADAPTER_DIR)).eval())):
        total = tokens = 0
        for text in texts:
            ids = prompt + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            if len(ids) > release["train_generator"]["max_seq_len"]:
                continue
            labels = torch.tensor([[-100] * len(prompt) + ids[len(prompt):]])
            with torch.no_grad():
                loss = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
            total, tokens = total + loss * (len(ids) - len(prompt)), tokens + len(ids) - len(prompt)
        expected[name] = total / tokens
    assert result["base"]["mean"] == pytest.approx(expected["base"], abs=1e-4)
    assert result["dp"]["mean"] == pytest.approx(expected["dp"], abs=1e-4)
    assert result["tokens"] == tokens and result["records"] + result["skipped_too_long"] == len(texts)
    for key in ("base", "dp", "dp_minus_base"):
        assert result[key]["lo"] <= result[key]["mean"] <= result[key]["hi"]
    assert result["dp_minus_base"]["mean"] == pytest.approx(expected["dp"] - expected["base"], abs=2e-4)
    assert json.loads(Path(val_nll.METRICS).read_text()) == json.loads(json.dumps(result))


def test_bad_params_are_refused_before_sampling(release):
    from dpinstruct.io.errors import ConfigError

    release["generate"]["top_p"] = 1.5
    with pytest.raises(ConfigError, match=r"generate.top_p"):
        run(release)
    assert not stage.CHUNK_DIR.exists()


def test_chunks_of_other_sampling_code_are_not_resumed(release, monkeypatch):
    run(release)
    real_digest, real_sample, calls = stage.file_digest, sampler.sample, []
    # Pretend dpinstruct/models/sampler.py was edited: its saved chunks must be re-sampled, not reused.
    monkeypatch.setattr(stage, "file_digest", lambda p: "edited" if str(p) == sampler.__file__ else real_digest(p))
    monkeypatch.setattr(sampler, "sample", lambda *a, **k: (calls.append(1), real_sample(*a, **k))[1])
    run(release)
    assert len(calls) == 3


def test_the_pool_follows_the_key_through_the_adapter(release, trained_adapter, tmp_path_factory, tiny_generator_dir,
                                                      repo_params, monkeypatch):
    run(release)
    first = pool_digest()
    # the same key trains the same adapter, hence the same pool; another key neither
    for key, same in (("DPINSTRUCT_KEY_FILE", True), ("other", False)):
        if key == "other":
            monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(tmp_path_factory.mktemp("key") / "other.key"))
        again = train_adapter(tmp_path_factory, tiny_generator_dir, repo_params)
        shutil.rmtree(stage.ADAPTER_DIR)
        shutil.copytree(again, stage.ADAPTER_DIR)
        shutil.rmtree(stage.CHUNK_DIR, ignore_errors=True)
        run(release)
        assert (pool_digest() == first) == same


def test_the_real_generator_samples_a_pool_end_to_end(tmp_path_factory, tmp_path, monkeypatch, generator_dir,
                                                      repo_params):
    """The one run on the real model: its DP-trained adapter, merged, samples instructions (words,
    not noise) that pass the pool's filters."""
    adapter = train_adapter(tmp_path_factory, generator_dir, repo_params)
    counts = run(release_project(tmp_path, monkeypatch, generator_dir, adapter, repo_params))
    pool = pq.read_table(stage.POOL).to_pandas()
    assert counts["sampled"] == 20 and len(pool) == counts["kept"] > 0
    words = pool.instruction.str.split().map(len)
    assert (words >= 1).all() and pool.instruction.str.contains(r"[A-Za-z]{3}").mean() > 0.5
