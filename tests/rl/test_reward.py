"""The sentiment reward on real public reviews: it learns sentiment, and what later stages load
scores exactly as what was fitted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dpinstruct.rl import reward

REPO = Path(__file__).resolve().parents[2]


def public_reviews(n: int):
    table = pq.read_table(REPO / "data/raw/imdb/test.parquet", columns=["text", "label"])
    # the file is grouped by label: draw across it, then shuffle
    return table.take(list(range(0, 25000, 25000 // n))[:n]).to_pandas().sample(frac=1, random_state=0)


def test_learns_sentiment_and_round_trips(tmp_path):
    reviews = public_reviews(600)
    fit_on, held = reviews.iloc[:500], reviews.iloc[500:]
    model = reward.fit(fit_on.text.tolist(), fit_on.label.to_numpy(), c=4.0, min_df=2)
    accuracy = ((model.logits(held.text.tolist()) > 0) == held.label.to_numpy()).mean()
    assert accuracy > 0.65  # 100 held-out reviews; a coin would need luck at p < 0.001
    good, bad = model.logits(["a wonderful, moving film; great acting", "a boring, awful waste of time"])
    assert good > 0 > bad
    model.save(tmp_path)
    again = reward.SentimentReward.load(tmp_path)
    texts = held.text.tolist() + ["", "words it never saw: zxqv"]
    assert np.array_equal(again.logits(texts), model.logits(texts))
    assert again.logits([""])[0] == model.intercept  # no known word: the bias alone
