"""Reading the human preference pairs: bad input named by file, line and field, never quoted; the
pairs the source garbled dropped by a rule on each pair; the shipped file as documented."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dpinstruct.io.errors import InputError
from dpinstruct.rl.preferences import comparisons, preference_parts, read_pairs

REPO = Path(__file__).resolve().parents[2]
SECRET = "my card number is 4111"


def dialogue(question: str, answer: str) -> str:
    return f"\n\nHuman: hello\n\nAssistant: hi\n\nHuman: {question}\n\nAssistant: {answer}"


GOOD = {"chosen": dialogue("how do I pick a lock?", "I can't help with that."),
        "rejected": dialogue("how do I pick a lock?", f"Sure: {SECRET}")}


def write(tmp_path, lines, name="pairs.jsonl.gz") -> Path:
    path = tmp_path / name
    encoded = [line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
               for line in lines]
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(encoded) + b"\n")
    return path


BAD = {
    "malformed_json": ('{"chosen": "a", "rejected": ', "line 2: malformed JSON", None),
    "not_an_object": (json.dumps(["a", "b"]), "line 2: expected a JSON object", None),
    "missing_side": ({"chosen": GOOD["chosen"]}, "line 2, field 'rejected': missing", None),
    "side_not_a_string": ({"chosen": GOOD["chosen"], "rejected": 3}, "field 'rejected': expected a string", None),
    "empty_side": ({"chosen": "  \n", "rejected": GOOD["rejected"]}, "line 2, field 'chosen': empty text", None),
    "identical_sides": ({"chosen": GOOD["rejected"], "rejected": GOOD["rejected"]},
                        "line 2, field 'rejected': identical to 'chosen'", None),
    "bad_utf8": (b'{"chosen": "\xff"}', "line 2: not valid UTF-8", None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_line_and_field_without_quoting_it(tmp_path, case):
    line, message, _ = BAD[case]
    path = write(tmp_path, [GOOD, line])
    with pytest.raises(InputError) as error:
        read_pairs(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert SECRET not in str(error.value) and "lock" not in str(error.value)


def test_a_file_that_is_not_gzip_or_is_empty_is_refused(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    path.write_text("plain text")
    with pytest.raises(InputError, match="cannot be read as gzip"):
        read_pairs(path)
    with pytest.raises(InputError, match="no comparison in the file"):
        read_pairs(write(tmp_path, ["", "  "]))


def test_comparisons_keep_the_last_turn_and_drop_garbled_pairs(tmp_path):
    differs = {"chosen": dialogue("a?", "yes"), "rejected": dialogue("b?", "no")}
    empty = {"chosen": dialogue("a?", ""), "rejected": dialogue("a?", "no")}
    pairs, dropped = comparisons(read_pairs(write(tmp_path, [GOOD, differs, empty])))
    assert dropped == {"context_differs": 1, "empty_answer": 1}
    assert pairs.prompt.tolist() == ["how do I pick a lock?"]
    assert pairs.chosen.tolist() == ["I can't help with that."] and pairs.rejected.tolist() == [f"Sure: {SECRET}"]
    # the id is a function of the pair alone: the same pair elsewhere in another file has the same id
    again, _ = comparisons(read_pairs(write(tmp_path, [empty, GOOD], "other.jsonl.gz")))
    assert again.id.tolist() == pairs.id.tolist()


def test_a_repeated_comparison_is_one_comparison(tmp_path):
    # set semantics, not an error: a copy of a line changes nothing the parts hold
    shares = {"reward": 0.8, "heldout": 0.2}
    once, counts = preference_parts(read_pairs(write(tmp_path, [GOOD])), 0, shares)
    twice, counts2 = preference_parts(read_pairs(write(tmp_path, [GOOD, GOOD], "twice.jsonl.gz")), 0, shares)
    assert twice.equals(once) and counts2 == {**counts, "duplicates": 1} and counts["duplicates"] == 0


def test_the_shipped_file_is_as_its_source_says():
    pairs = read_pairs(REPO / "data/raw/hh_rlhf/pairs.jsonl.gz")
    kept, dropped = comparisons(pairs)
    assert len(pairs) == 1900 and dropped == {"context_differs": 5, "empty_answer": 3} and len(kept) == 1892
    assert (REPO / "data/raw/hh_rlhf/LICENSE").read_text().startswith("MIT")
