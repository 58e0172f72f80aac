"""The request cache: a re-run never pays twice, and an answer survives the process that got it."""
from __future__ import annotations

from dpinstruct.alignment.request_cache import RequestCache, request_key

MESSAGES = [{"role": "user", "content": "Name a colour."}]


def test_the_key_is_the_request_itself():
    key = request_key("m", MESSAGES, {"temperature": 0.0, "max_tokens": 8})
    assert key == request_key("m", [dict(MESSAGES[0])], {"max_tokens": 8, "temperature": 0.0})  # order-free
    assert key != request_key("other", MESSAGES, {"temperature": 0.0, "max_tokens": 8})
    assert key != request_key("m", MESSAGES, {"temperature": 0.7, "max_tokens": 8})
    assert key != request_key("m", [{"role": "user", "content": "Name a color."}], {"temperature": 0.0, "max_tokens": 8})


def test_answers_persist_across_processes_and_replace_by_key(tmp_path):
    path = tmp_path / "cache/requests.sqlite"
    cache = RequestCache(path)
    key = request_key("m", MESSAGES, {})
    assert cache.get(key) is None
    cache.put(key, {"text": "blue"})
    cache.close()  # as a killed run leaves it: every put was committed
    reopened = RequestCache(path)
    assert reopened.get(key) == {"text": "blue"} and len(reopened) == 1
    reopened.put(key, {"text": "green"})
    assert reopened.get(key) == {"text": "green"} and len(reopened) == 1
    reopened.close()
