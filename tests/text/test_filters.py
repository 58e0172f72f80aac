from dpinstruct.text.filters import dedup, ngrams, normalise


def test_normalise_keeps_newlines_and_collapses_spaces():
    assert normalise("  a \t b\r\n\r\n\r\n\r\nc  ") == "a b\n\nc"
    assert normalise(None) == "" and normalise(" \n\t ") == ""
    assert normalise("e\u0301") == "\u00e9"  # NFC


def test_exact_dedup_casefolds_and_keeps_first():
    assert dedup(["Hello  World", "hello world", "Other"], casefold=True, ngram_n=0) == [None, "exact", None]
    assert dedup(["Hello World", "hello world"], casefold=False, ngram_n=0) == [None, None]


def test_ngram_dedup_drops_rows_sharing_a_10_gram():
    base = "one two three four five six seven eight nine ten"
    texts = [base + " eleven", "zero " + base, "one two three four five six seven eight nine", base[:-4] + " TEN!"]
    assert dedup(texts, casefold=True, ngram_n=10) == [None, "ngram", None, "ngram"]
    assert dedup(texts, casefold=True, ngram_n=0) == [None, None, None, None]
    assert len(ngrams(base, 10)) == 1 and ngrams("short text", 10) == set()
