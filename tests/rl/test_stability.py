"""The private preparation steps are 1-stable: adding one unit x to the RAW private file changes the
input of each DP mechanism by x's own row at most, in one part only, and leaves the other part as it
was (``dpinstruct.privacy``: the neighbouring relation the ledger's epsilon covers is "add or remove
one unit of the raw file").

IMDb: the raw reviews -> the DP-SFT part and the DP-PPO part (``rl.data.private_parts``); the unit
is one review, with set semantics on its cleaned text (a copy of a review already in the file is
the same review: it must change nothing). HH-RLHF: the raw comparisons -> the reward part (the DP
reward model's input) and the held-out part (``rl.preferences.preference_parts``); the unit is one
comparison. Adversarial x: an exact copy of a row (with a new id that may sort first, or with its
own id), a near copy (the same after cleaning, or one character more), a new unit, anywhere in the
file, first included. Plus the real stage `imdb_prepare` on real-format Parquet files.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpinstruct.io.artifacts import Outputs
from dpinstruct.rl.data import check_reviews, clean_review, private_parts
from dpinstruct.rl.preferences import preference_parts, read_pairs

REPO = Path(__file__).resolve().parents[2]
CFG = {"min_tokens": 6, "prompt_tokens": 3, "sft_tokens": 9, "seed": 0, "shares": {"sft": 0.5, "ppo": 0.5}}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode(texts: list[str]) -> list[list[int]]:
    """A character tokenizer: each text on its own, like the real one without padding."""
    return [[ord(c) for c in t] for t in texts]


def decode(ids: list[int]) -> str:
    return "".join(map(chr, ids))


def symmetric_difference(a: Counter, b: Counter) -> Counter:
    return (a - b) + (b - a)


# --- IMDb ----------------------------------------------------------------------------------------

# Few words, so copies and near copies of whole reviews and of their openings are common.
WORDS = st.sampled_from(["good", "bad", "film", "plot", "the", "A", "caf\u00e9", "cafe\u0301", "<br />", "<br/>", "  ",
                         "!", "\n"])
TEXTS = st.lists(WORDS, min_size=0, max_size=6).map(" ".join)
IDS = st.text(alphabet="abcdef0123", min_size=1, max_size=3)  # the file's ids
FRESH_IDS = st.one_of(st.just("!"), st.text(alphabet="!xyz", min_size=1, max_size=3))  # never a file id; "!" sorts first


@st.composite
def review_files(draw):
    ids = draw(st.lists(IDS, min_size=1, max_size=12, unique=True))
    texts = draw(st.lists(TEXTS, min_size=len(ids), max_size=len(ids)))
    copies = draw(st.lists(st.tuples(st.integers(0, len(ids) - 1), st.integers(0, len(ids) - 1)), max_size=3))
    for src, dst in copies:  # copies already in D, under other ids
        texts[dst] = texts[src]
    labels = draw(st.lists(st.integers(0, 1), min_size=len(ids), max_size=len(ids)))
    return list(zip(ids, labels, texts))


@st.composite
def review_and_unit(draw):
    rows = draw(review_files())
    src = draw(st.sampled_from(rows))
    kind = draw(st.sampled_from(["copy", "verbatim_row", "near_same_clean", "near_one_more", "new"]))
    text = {"copy": src[2], "verbatim_row": src[2],
            "near_same_clean": " " + src[2].replace(" ", "  ") + " <br />",  # cleans to src's text (or its start)
            "near_one_more": src[2] + "x",
            "new": draw(TEXTS)}[kind]
    x = src if kind == "verbatim_row" else (draw(FRESH_IDS), draw(st.integers(0, 1)), text)
    at = draw(st.sampled_from([0, len(rows), draw(st.integers(0, len(rows)))]))  # first, last, anywhere
    return rows, x, rows[:at] + [x] + rows[at:]


def imdb_parts(rows):
    """The raw rows as read from the file -> (reviews as checked, the DP-SFT input, the DP-PPO input)."""
    reviews = check_reviews(pd.DataFrame(rows, columns=["id", "label", "text"]), "reviews.parquet")
    sft, prompts, counts = private_parts(reviews, encode, decode, **CFG)
    assert counts["read"] == len(rows) == counts["duplicates"] + counts["too_short"] + counts["sft"] + counts["ppo"]
    return reviews, sft, [p for p in prompts if p[3] == "ppo"], prompts


def by_review(reviews, rows):
    """Each output row under the cleaned text of the review it comes from."""
    text = dict(zip(reviews.id, reviews.text))
    keyed = {}
    for row in rows:
        assert text[row[0]] not in keyed, "a review appears twice in one DP input"
        keyed[text[row[0]]] = row
    return keyed


@SETTINGS
@given(review_and_unit())
def test_imdb_parts_change_by_the_added_reviews_own_row_at_most(case):
    rows, x, rows_x = case
    reviews, sft, ppo, prompts = imdb_parts(rows)
    reviews_x, sft_x, ppo_x, prompts_x = imdb_parts(rows_x)
    own = clean_review(x[2])
    tokens = encode([own])[0]
    # As multisets of the texts each mechanism reads:
    diff_sft = symmetric_difference(Counter(r[1] for r in sft), Counter(r[1] for r in sft_x))
    diff_ppo = symmetric_difference(Counter(r[1] for r in ppo), Counter(r[1] for r in ppo_x))
    assert sum(diff_sft.values()) + sum(diff_ppo.values()) <= 1  # one row, in one part: the other is unchanged
    assert set(diff_sft) <= {decode(tokens[:CFG["sft_tokens"]])} and set(diff_ppo) <= {decode(tokens[:CFG["prompt_tokens"]])}
    if own in set(reviews.text):  # a copy of a review already in the file is that review: nothing changes
        assert not diff_sft and not diff_ppo
    # Row by row: every other review's rows are exactly as they were (id, text, tokens, part), and
    # no review is in both parts or twice in one.
    for before, after in ((sft, sft_x), (prompts, prompts_x)):
        keyed, keyed_x = by_review(reviews, before), by_review(reviews_x, after)
        keyed.pop(own, None), keyed_x.pop(own, None)
        assert keyed == keyed_x


@SETTINGS
@given(review_files(), st.randoms(use_true_random=False))
def test_imdb_parts_do_not_depend_on_the_file_order(rows, rng):
    shuffled = list(rows)
    rng.shuffle(shuffled)
    assert imdb_parts(rows)[1:] == imdb_parts(shuffled)[1:]


# --- HH-RLHF -------------------------------------------------------------------------------------

def dialogue(question: str, answer: str, earlier: str = "hello") -> str:
    return f"\n\nHuman: {earlier}\n\nAssistant: hi\n\nHuman: {question}\n\nAssistant: {answer}"


SAYINGS = st.sampled_from(["yes", "no", "maybe", "I can't", "sure", "", " ", "ok\n\nHuman: again"])
QUESTIONS = st.sampled_from(["why?", "how?", "what?", ""])


@st.composite
def comparison(draw):
    question, earlier = draw(QUESTIONS), draw(st.sampled_from(["hello", "hey"]))
    chosen, rejected = draw(SAYINGS), draw(SAYINGS)
    other = draw(st.sampled_from([question, question, question, "other?"]))  # sometimes garbled: contexts differ
    line = {"chosen": dialogue(question, chosen, earlier), "rejected": dialogue(other, rejected, earlier)}
    return line if line["chosen"] != line["rejected"] else {**line, "rejected": line["rejected"] + "!"}


@st.composite
def pair_file_and_unit(draw):
    lines = draw(st.lists(comparison(), min_size=1, max_size=10))
    src = draw(st.sampled_from(lines))
    kind = draw(st.sampled_from(["copy", "near_copy", "new"]))
    near = {**src, "chosen": src["chosen"] + " "}  # the same final answer once stripped, another id
    if near["chosen"] == near["rejected"]:  # a line the reader refuses: vary the other side
        near = {**src, "rejected": src["rejected"] + " "}
    x = {"copy": src, "near_copy": near, "new": draw(comparison())}[kind]
    at = draw(st.sampled_from([0, len(lines), draw(st.integers(0, len(lines)))]))
    return lines, x, lines[:at] + [x] + lines[at:]


def hh_parts(path: Path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    pairs, counts = preference_parts(read_pairs(path), 0, {"reward": 0.8, "heldout": 0.2})
    return pairs, counts


def records(pairs) -> list[tuple]:
    """The rows, in id order: the file order of the comparisons is kept, and DP-Adam's Poisson
    sampling is the same in distribution whatever the order."""
    return sorted(pairs[["id", "prompt", "chosen", "rejected", "partition"]].itertuples(index=False, name=None))


def part_rows(pairs, part):
    return Counter(map(tuple, pairs[pairs.partition == part][["prompt", "chosen", "rejected"]].to_numpy().tolist()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=pair_file_and_unit())
def test_hh_parts_change_by_the_added_comparisons_own_row_at_most(tmp_path, case):
    lines, x, lines_x = case
    pairs, counts = hh_parts(tmp_path / "d.jsonl", lines)
    pairs_x, counts_x = hh_parts(tmp_path / "dx.jsonl", lines_x)
    diff = {part: symmetric_difference(part_rows(pairs, part), part_rows(pairs_x, part)) for part in ("reward", "heldout")}
    assert sum(sum(d.values()) for d in diff.values()) <= 1  # the reward part (DP input) and the held-out part
    x_pairs, _ = hh_parts(tmp_path / "x.jsonl", [x])
    assert all(set(d) <= set(part_rows(x_pairs, part)) for part, d in diff.items())  # x's own row, in x's part
    if x in lines:  # the same comparison again: nothing changes
        assert records(pairs_x) == records(pairs) and counts_x == {**counts, "duplicates": counts["duplicates"] + 1}
    # every other comparison's row is exactly as it was (the order aside)
    other = set(pairs.id) | set(pairs_x.id)
    other -= set(x_pairs.id)
    assert records(pairs[pairs.id.isin(other)]) == records(pairs_x[pairs_x.id.isin(other)])
    assert not pairs_x.id.duplicated().any()


# --- the real stage ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, repo_params) -> Path:
    """The generator's tokenizer alone, exactly as the models stage saves it (the stage loads nothing else)."""
    from transformers import AutoTokenizer

    from dpinstruct.models.loading import package_dir

    models = repo_params["models"]
    assert models["generator"].startswith("package:")
    folder = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(package_dir(models["generator"]), gguf_file=models["generator_gguf_file"]).save_pretrained(folder)
    return folder


def run_stage_on(root: Path, table: pa.Table, tokenizer_dir: Path, params: dict, monkeypatch) -> dict:
    from stages import imdb_prepare

    (root / "data/models").mkdir(parents=True)
    os.symlink(tokenizer_dir, root / "data/models/generator")
    pq.write_table(table, root / "train.parquet")
    params = yaml.safe_load(yaml.safe_dump(params))
    params["rl"]["data"]["private_path"] = str(root / "train.parquet")
    monkeypatch.chdir(root)
    with Outputs() as out:
        imdb_prepare.imdb_prepare(params, out)
    return {name: pq.read_table(root / path).to_pandas() for name, path in (("sft", imdb_prepare.SFT),
                                                                             ("prompts", imdb_prepare.PROMPTS))}


def rows(df: pd.DataFrame, without_id=False) -> Counter:
    cols = [c for c in df.columns if not (without_id and c == "id")]
    return Counter(tuple(tuple(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for v in r)
                   for r in df[cols].itertuples(index=False))


def test_the_real_stage_changes_one_row_at_most_when_one_review_is_added(tmp_path, tokenizer_dir, repo_params,
                                                                          monkeypatch):
    shipped = pq.read_table(REPO / "data/raw/imdb/train.parquet").to_pandas()
    d = shipped.iloc[list(range(0, 25000, 500))].reset_index(drop=True)  # 50 real reviews, both labels
    d = pd.concat([d, d.iloc[[3]].assign(id="train_pos_zz_copy")], ignore_index=True)  # a copy already in D
    new = shipped.iloc[[7]].assign(id="train_pos_new")
    cases = {  # x, placed first in the file
        "copy, id sorts first": d.iloc[[5]].assign(id="!first"),
        "copy, id sorts last": d.iloc[[5]].assign(id="zzz"),
        "copy up to spaces, id sorts first": d.iloc[[8]].assign(id="!near", text=" " + d.text[8].replace(" ", "   ", 1) + " "),
        **{f"copy of review {k}, id sorts first": d.iloc[[k]].assign(id=f"!{k}") for k in (11, 14, 17, 20, 23, 26)},
        "new review": new,
        "new review, id sorts first": new.assign(id="!new"),
    }
    base = run_stage_on(tmp_path / "d", pa.Table.from_pandas(d, preserve_index=False), tokenizer_dir, repo_params,
                        monkeypatch)
    assert len(base["prompts"]) == 50  # the copy already in D is one review
    for i, (name, x) in enumerate(cases.items()):
        with_x = pd.concat([x, d], ignore_index=True)
        got = run_stage_on(tmp_path / f"x{i}", pa.Table.from_pandas(with_x, preserve_index=False), tokenizer_dir,
                           repo_params, monkeypatch)
        # rows that differ, ids aside, in the DP-SFT input, the DP-PPO input and the whole prompts file
        ppo = [v[v.partition == "ppo"].drop(columns="partition") for v in (base["prompts"], got["prompts"])]
        changed = {part: sum(symmetric_difference(rows(a, True), rows(b, True)).values())
                   for part, a, b in (("sft", base["sft"], got["sft"]), ("ppo", *ppo),
                                      ("prompts", base["prompts"], got["prompts"]))}
        if name.startswith("copy"):
            assert changed == {"sft": 0, "ppo": 0, "prompts": 0}, name
            # the ids: at most the one on x's own review's row, which becomes x's id when it sorts first
            rep = d.id[int(x.index[0])]
            expected = Counter({x.id.iloc[0]: 1, rep: 1}) if x.id.iloc[0] < rep else Counter()
            assert symmetric_difference(Counter(base["prompts"].id), Counter(got["prompts"].id)) == expected, name
        else:
            assert changed["prompts"] == 1 and changed["sft"] + changed["ppo"] == 1, name
