"""Length and distinct-n statistics."""
from __future__ import annotations

import numpy as np
import pytest

from dpinstruct.text.stats import distinct_n, length_shares, words


def test_words_split_punctuation_and_lowercase():
    assert words("Hello, World! 3 cats") == ["hello", ",", "world", "!", "3", "cats"]


def test_distinct_n_counts_unique_ngrams_over_the_set():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 unique of 7; bigrams: ab ba ab ab bc -> 3 unique of 5
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["one"], 2) == 0.0


def test_length_shares_have_an_open_last_bin_and_sum_to_one():
    shares = length_shares(np.array([0, 4, 5, 9, 10, 250]), width=5, top=10)
    assert shares.tolist() == pytest.approx([2 / 6, 2 / 6, 2 / 6])  # [0,5) [5,10) [10,inf)
