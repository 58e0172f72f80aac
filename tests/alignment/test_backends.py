"""The OpenAI-compatible backend with the real `openai` client against a server on 127.0.0.1:
success, 429 then success, 500s until the retry budget is spent, a timeout, malformed JSON, empty
content; errors name the label and row id and never the private text; a resumed run sends only
what is missing."""
from __future__ import annotations

import pytest

from dpinstruct.alignment.backends import BackendError, OpenAIChatBackend, Request
from tests.alignment.openai_server import FakeOpenAI, Reply, answer_for, ok

SECRET = "my bank password is hunter2"
DECODING = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16}


def requests(n=6):
    return [Request(f"r{i}", [{"role": "user", "content": f"{SECRET} #{i}"}]) for i in range(n)]


def backend(server, tmp_path, **kw):
    settings = {"concurrency": 3, "timeout": 2.0, "max_retries": 2, "private": True, **kw}
    return OpenAIChatBackend(base_url=server.url, model="m", api_key_env=None, decoding=DECODING,
                             cache_path=tmp_path / "cache.sqlite", **settings)


def test_answers_come_back_in_row_order_and_are_cached(tmp_path):
    with FakeOpenAI() as server:
        answers = backend(server, tmp_path).complete(requests(), label="annotate@test")
        assert [a.text for a in answers] == [answer_for({"messages": r.messages}) for r in requests()]
        assert all(a.finish_reason == "stop" and a.tokens == 2 for a in answers)
        assert len(server.requests) == 6
        assert server.requests[0]["max_tokens"] == 16 and server.requests[0]["temperature"] == 0.0
        again = backend(server, tmp_path).complete(requests(), label="annotate@test")
        assert [a.text for a in again] == [a.text for a in answers] and len(server.requests) == 6  # nothing re-sent


def test_429_then_success_is_retried(tmp_path):
    def busy_twice(n, body):
        return Reply(status=429, headers={"retry-after-ms": "5"}) if n < 2 else ok(n, body)

    with FakeOpenAI(busy_twice) as server:
        answers = backend(server, tmp_path, concurrency=1).complete(requests(3), label="annotate@test")
        assert len(answers) == 3 and len(server.requests) == 5  # two refusals, then three answers


def test_500s_until_the_retry_budget_is_spent(tmp_path):
    def broken(n, body):
        return Reply(status=500, headers={"retry-after-ms": "5"})

    with FakeOpenAI(broken) as server:
        with pytest.raises(BackendError) as err:
            backend(server, tmp_path, concurrency=1, max_retries=2).complete(requests(2), label="annotate@train")
        message = str(err.value)
        assert "annotate@train" in message and "row id 'r0'" in message and "HTTP 500" in message
        assert SECRET not in message and "hunter2" not in message
        assert len(server.requests) == 3  # the first row: 1 try + 2 retries; the second never sent


def test_a_timeout_fails_with_the_row_id(tmp_path):
    with FakeOpenAI(lambda n, body: Reply(content="late", delay=1.5)) as server:
        with pytest.raises(BackendError, match=r"row id 'r0'.*APITimeoutError"):
            backend(server, tmp_path, concurrency=1, timeout=0.3, max_retries=1).complete(requests(1), label="a@test")


@pytest.mark.parametrize("reply, what", [
    (Reply(body=b'{"id": "x", "choices": [ {"index": 0'), "APIResponseValidationError|JSONDecodeError"),
    (Reply(content=""), "the reply's content is empty"),
])
def test_malformed_json_and_empty_content_fail_cleanly(tmp_path, reply, what):
    with FakeOpenAI(lambda n, body: reply) as server:
        with pytest.raises(BackendError, match=what) as err:
            backend(server, tmp_path, concurrency=1, max_retries=0).complete(requests(1), label="annotate@test")
        assert "row id 'r0'" in str(err.value) and SECRET not in str(err.value)


def test_a_resumed_run_sends_only_what_is_missing(tmp_path):
    def fails_on_row_4(n, body):
        return Reply(status=500) if body["messages"][0]["content"].endswith("#4") else ok(n, body)

    with FakeOpenAI(fails_on_row_4) as server:
        with pytest.raises(BackendError, match="row id 'r4'"):
            backend(server, tmp_path, concurrency=2, max_retries=0).complete(requests(), label="annotate@test")
        sent_first = {b["messages"][0]["content"] for b in server.requests}
    with FakeOpenAI() as server:
        answers = backend(server, tmp_path).complete(requests(), label="annotate@test")
        resent = [b["messages"][0]["content"] for b in server.requests]
    assert len(answers) == 6 and f"{SECRET} #4" in resent
    # every answer received before the failure was kept: only rows never answered are sent again
    assert len(resent) == 6 - (len(sent_first) - 1) and not (set(resent) & (sent_first - {f"{SECRET} #4"}))


def test_a_missing_key_variable_is_refused(tmp_path, monkeypatch):
    from dpinstruct.io.errors import ConfigError

    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with FakeOpenAI() as server, pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        OpenAIChatBackend(base_url=server.url, model="m", api_key_env="NO_SUCH_KEY_VAR", concurrency=1, timeout=1,
                          max_retries=0, decoding=DECODING, cache_path=tmp_path / "c.sqlite")
