"""Sampling a pool in chunks (tiny random generator, real tokenizer): chunk sizes, per-chunk seeds,
the model loaded only when a chunk is missing, finished chunks reused; and parsing a pool: ids that
name chunk and row, every drop counted under its reason, exact duplicates dropped after the first.
(tests/stages/test_generate.py runs both through the generate stages.)"""
from __future__ import annotations

import pyarrow as pa
import pytest

from dpinstruct.io.chunk_store import ChunkStore
from dpinstruct.io.settings.generation import Generate
from dpinstruct.models import pool_sampling as PS
from dpinstruct.models.loading import load_generator
from dpinstruct.text.generation_parsing import REASONS

PROMPT = "<|im_start|>user\n"


@pytest.fixture(scope="module")
def tiny(tiny_generator_dir):
    model, tokenizer = load_generator(tiny_generator_dir)
    return model, tokenizer, tokenizer(PROMPT, add_special_tokens=False)["input_ids"]


def generate(repo_params, **changes) -> Generate:
    return Generate.from_params({"generate": {**repo_params["generate"], **changes}})


def test_chunk_seeds_are_fixed_distinct_and_fit_a_signed_64_bit_int():
    seeds = [PS.chunk_seed(s, c) for s in (0, 1) for c in range(50)]
    assert len(set(seeds)) == 100 and all(0 <= s < 2 ** 63 for s in seeds)
    assert seeds[:50] == [PS.chunk_seed(0, c) for c in range(50)]  # a function of (seed, chunk) alone


class Loads:
    """``load_model`` for sample_chunks: the tiny model, counting the loads."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self):
        self.calls += 1
        return self.model


def test_chunks_have_batch_size_rows_and_a_short_last_one(tiny, repo_params, tmp_path):
    model, tokenizer, prompt_ids = tiny
    cfg = generate(repo_params, n=5, batch_size=2, max_new_tokens=4)
    load = Loads(model)
    chunks = PS.sample_chunks(cfg, "key", prompt_ids, tmp_path, load, tokenizer.eos_token_id)
    assert [len(c) for c in chunks] == [2, 2, 1] and load.calls == 1
    assert all(1 <= len(row) <= 4 for c in chunks for row in c)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"key-{c:05d}.parquet" for c in range(3)]
    # the pool is a function of (seed, chunk): sampled afresh elsewhere, it is the same
    again = PS.sample_chunks(cfg, "key", prompt_ids, tmp_path / "again", Loads(model), tokenizer.eos_token_id)
    assert again == chunks
    other = PS.sample_chunks(generate(repo_params, n=5, batch_size=2, max_new_tokens=4, seed=1), "key", prompt_ids,
                             tmp_path / "other", Loads(model), tokenizer.eos_token_id)
    assert other != chunks


def test_finished_chunks_are_reused_and_the_model_loaded_only_for_missing_ones(tiny, repo_params, tmp_path):
    model, tokenizer, prompt_ids = tiny
    cfg = generate(repo_params, n=6, batch_size=2, max_new_tokens=3)
    whole = PS.sample_chunks(cfg, "key", prompt_ids, tmp_path, Loads(model), tokenizer.eos_token_id)

    def no_model():
        pytest.fail("the model was loaded although every chunk was saved")

    assert PS.sample_chunks(cfg, "key", prompt_ids, tmp_path, no_model, tokenizer.eos_token_id) == whole
    # a run killed after chunks 0 and 2 (here: chunk 1's file removed, chunk 2's replaced by a marker)
    ChunkStore(tmp_path, "key").path(1).unlink()
    marker = [[7, 7, 7], [8]]
    ChunkStore(tmp_path, "key").save(2, pa.table({"tokens": marker}, schema=PS.CHUNK_SCHEMA))
    load = Loads(model)
    resumed = PS.sample_chunks(cfg, "key", prompt_ids, tmp_path, load, tokenizer.eos_token_id)
    assert load.calls == 1 and resumed == [whole[0], whole[1], marker]  # chunk 1 resampled alike, 2 reused


def test_parse_pool_counts_every_drop_and_names_rows_by_chunk_and_row(tiny, repo_params):
    _, tokenizer, prompt_ids = tiny
    eos = tokenizer.eos_token_id
    cfg = generate(repo_params, n=8, seed=3, drop_truncated=True, min_tokens=2, dedup_casefold=True)

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    chunks = [
        [ids("How do I bake bread?") + [eos],                  # g00000-0000 kept
         ids("Tell me a story about the sea") ,               # truncated: no EOS within max_new_tokens
         [eos]],                                               # empty
        [ids("Hi") + [eos],                                    # too_short (1 token < min_tokens)
         ids(" the" * 10) + [eos],                             # degenerate: 10 words, 1 distinct
         prompt_ids + ids("What is a prime number?") + [eos],  # g00001-0002 kept, prompt echo stripped
         ids("how do I bake  BREAD?") + [eos],                 # exact duplicate of the first, casefolded
         ids("Name a colour.") + [eos, 5, 6]],                 # g00001-0004 kept; text ends at EOS
    ]
    df, counts = PS.parse_pool(chunks, cfg, prompt_ids, tokenizer, id_prefix="g")
    assert df.id.tolist() == ["g00000-0000", "g00001-0002", "g00001-0004"]
    assert df.instruction.tolist() == ["How do I bake bread?", "What is a prime number?", "Name a colour."]
    assert df.chunk.tolist() == [0, 1, 1] and df.seed.tolist() == [PS.chunk_seed(3, c) for c in (0, 1, 1)]
    assert df.n_tokens.tolist() == [len(ids("How do I bake bread?")), len(ids("What is a prime number?")),
                                    len(ids("Name a colour."))]
    assert counts == {"sampled": 8, "truncated": 1, "empty": 1, "too_short": 1, "degenerate": 1,
                      "exact_duplicate": 1, "kept": 3, "tokens_sampled": sum(len(t) for c in chunks for t in c)}
    assert set(REASONS) < set(counts)
    assert pa.Table.from_pandas(df, schema=PS.SCHEMA, preserve_index=False).num_rows == 3  # the pool's schema
    # case-sensitive dedup keeps the other casing; another prefix names the rows (generate_base: "b")
    df, counts = PS.parse_pool(chunks, generate(repo_params, n=8, seed=3, dedup_casefold=False), prompt_ids, tokenizer,
                               id_prefix="b")
    assert counts["exact_duplicate"] == 0 and df.id.tolist()[2] == "b00001-0003"
