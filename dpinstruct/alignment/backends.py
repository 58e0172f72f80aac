"""Chat backends that answer instructions: a local causal LM or any OpenAI-compatible endpoint.

Both take requests (a row id and chat messages) and return one ``Completion`` per request, in
order. ``BACKENDS`` maps the params value (``local`` | ``openai``) to the class.

* ``local``: any Hugging Face causal LM folder or id (default: the materialised base generator),
  its chat template applied, decoded in batches on the project's fast sampler
  (``sampler.sample``). Requests are sorted by prompt length and cut into fixed chunks,
  chunk c drawn with a seed derived from (seed, c) and saved whole, so a killed run resumes at the
  first missing chunk and produces what an uninterrupted run would.
* ``openai``: the official ``openai`` client against ``base_url`` (vLLM, TGI, llama.cpp server,
  Ollama or a hosted API), the key read from the environment variable NAMED in params. Requests go
  out ``concurrency`` at a time; the client retries 429, 5xx, timeouts and dropped connections with
  exponential backoff (honouring Retry-After), ``max_retries`` times; every answer goes into a
  request cache (``request_cache``) as it arrives, so a re-run or a resumed run sends only what is
  missing. A failure ends the run with an error naming the request's label and row id, and for a
  private set nothing of the server's reply, which could echo the text.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dpinstruct.alignment.chat import chat_ids
from dpinstruct.alignment.request_cache import RequestCache, request_key
from dpinstruct.io.errors import ConfigError, PipelineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    row_id: str
    messages: list[dict]


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int          # completion tokens
    finish_reason: str   # "stop" (ended by the model) or "length" (cut at max_new_tokens)


class BackendError(PipelineError):
    """A request failed for good (after the backend's retries); names the label and row id."""


class UnusableReply(ValueError):
    """A well-formed reply that cannot serve as an answer (no choices, empty content)."""


class _NotSent(Exception):
    """A request skipped because another one already failed for good."""


class _Progress:
    """A tqdm bar with requests/s and tokens/s."""

    def __init__(self, total: int, done: int, label: str):
        self.bar = tqdm(total=total, initial=done, desc=label, unit="req")
        self.start, self.requests, self.tokens = time.perf_counter(), 0, 0

    def update(self, requests: int, tokens: int) -> None:
        self.requests, self.tokens = self.requests + requests, self.tokens + tokens
        seconds = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(req_s=f"{self.requests / seconds:.2f}", tok_s=f"{self.tokens / seconds:.0f}", refresh=False)
        self.bar.update(requests)

    def close(self) -> dict:
        self.bar.close()
        seconds = max(time.perf_counter() - self.start, 1e-9)
        return {"requests": self.requests, "tokens": self.tokens, "seconds": seconds}


class LocalChatBackend:
    """A local causal LM with its chat template, batched on the fast sampler."""

    remote = False

    def __init__(self, model_path: Path | str, *, decoding: dict, batch_size: int, seed: int, resume_dir: Path | str):
        self.model_path, self.decoding, self.batch_size, self.seed = str(model_path), decoding, batch_size, seed
        self.resume_dir = Path(resume_dir)
        self._model = self._tokenizer = None

    def tokenizer(self):
        if self._tokenizer is None:
            from dpinstruct.models.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_path)
        return self._tokenizer

    def model(self):
        if self._model is None:
            from dpinstruct.models.loading import load_generator

            self._model, self._tokenizer = load_generator(self.model_path)
        return self._model

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return chat_ids(self.tokenizer(), messages, generation_prompt=True)

    def complete(self, requests: list[Request], *, label: str) -> list[Completion]:
        import pyarrow as pa
        import torch

        from dpinstruct.io.chunk_store import ChunkStore
        from dpinstruct.io.params import params_hash
        from dpinstruct.models import sampler

        if not requests:
            return []
        prompts = [self.prompt_ids(r.messages) for r in requests]
        order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths pad little
        chunks = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # Saved chunks are reused only for the same requests, model, decoding and sampling code.
        run_key = params_hash(self.decoding, self.batch_size, self.seed, _model_digest(self.model_path),
                              hashlib.sha256(json.dumps(prompts).encode()).hexdigest(), _file_digest(sampler.__file__))
        store = ChunkStore(self.resume_dir, run_key)
        done = store.done(len(chunks))
        progress = _Progress(len(requests), sum(len(chunks[c]) for c in done), label)
        tokenizer = self.tokenizer()
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        for c, rows in enumerate(chunks):
            if c in done:
                continue
            generator = torch.Generator(device=next(self.model().parameters()).device).manual_seed(
                int(np.random.SeedSequence([self.seed, c]).generate_state(1, np.uint64)[0] >> np.uint64(1)))
            tokens = sampler.sample(self.model(), [prompts[i] for i in rows], eos_id=eos, pad_id=pad,
                              max_new_tokens=self.decoding["max_new_tokens"], top_p=self.decoding["top_p"],
                              temperature=self.decoding["temperature"], generator=generator)
            store.save(c, pa.table({"tokens": tokens}, schema=pa.schema([("tokens", pa.list_(pa.int32()))])))
            progress.update(len(rows), sum(len(t) for t in tokens))
        self.stats = progress.close()
        out: list[Completion | None] = [None] * len(requests)
        for c, rows in enumerate(chunks):
            for i, tokens in zip(rows, store.load(c).column("tokens").to_pylist()):
                finished = bool(tokens) and tokens[-1] == eos
                body = tokens[:-1] if finished else tokens
                out[i] = Completion(tokenizer.decode(body, skip_special_tokens=True).strip(), len(tokens),
                                    "stop" if finished else "length")
        return out


class OpenAIChatBackend:
    """Any OpenAI-compatible chat-completions endpoint through the official client."""

    remote = True

    def __init__(self, *, base_url: str, model: str, api_key_env: str | None, concurrency: int, timeout: float,
                 max_retries: int, decoding: dict, cache_path: Path | str, private: bool = False):
        from openai import OpenAI

        if api_key_env and api_key_env not in os.environ:
            raise ConfigError("api_key_env", f"the environment variable {api_key_env!r} that should hold the API key "
                                             "is not set")
        key = os.environ[api_key_env] if api_key_env else "no-key"  # local servers often need none
        if concurrency < 1 or timeout <= 0 or max_retries < 0:
            raise ConfigError("openai", f"need concurrency >= 1, timeout > 0, max_retries >= 0; got {concurrency}, "
                                        f"{timeout}, {max_retries}")
        self.client = OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        self.model, self.concurrency, self.decoding, self.private = model, concurrency, decoding, private
        self.cache = RequestCache(cache_path)

    def _body(self) -> dict:
        return {"temperature": self.decoding["temperature"], "top_p": self.decoding["top_p"],
                "max_tokens": self.decoding["max_new_tokens"]}

    def _send(self, request: Request) -> dict:
        reply = self.client.chat.completions.create(model=self.model, messages=request.messages, **self._body())
        if not reply.choices:
            raise UnusableReply("the reply has no choices")
        choice = reply.choices[0]
        text = choice.message.content if choice.message else None
        if not text or not text.strip():
            raise UnusableReply("the reply's content is empty")
        tokens = reply.usage.completion_tokens if reply.usage else len(text.split())
        return {"text": text.strip(), "tokens": int(tokens), "finish_reason": choice.finish_reason or "stop"}

    def _send_unless_stopped(self, request: Request, stop: threading.Event) -> dict:
        # A worker picks its next request the moment it is free: the check must happen here, not
        # in the thread that learns about a failure later.
        if stop.is_set():
            raise _NotSent
        try:
            return self._send(request)
        except Exception:
            stop.set()
            raise

    def _failure(self, request: Request, label: str, error: Exception) -> BackendError:
        status = getattr(error, "status_code", None)
        what = type(error).__name__ + (f" (HTTP {status})" if status else "")
        # The server's own words could echo a private instruction: only ours, or a public set's, are shown.
        detail = f": {error}" if isinstance(error, UnusableReply) or not self.private else ""
        detail = detail[:240]
        return BackendError(f"{label}: the request for row id {request.row_id!r} failed after the client's retries, "
                            f"{what}{detail}; answers received so far are cached, a re-run sends only the rest")

    def complete(self, requests: list[Request], *, label: str) -> list[Completion]:
        body = self._body()
        keys = [request_key(self.model, r.messages, body) for r in requests]
        answers = {k: v for k in set(keys) if (v := self.cache.get(k)) is not None}
        missing = {}
        for r, k in zip(requests, keys):
            if k not in answers:
                missing.setdefault(k, r)
        log.info("%s: %d of %d requests cached, %d to send to %s", label, len(requests) - len(missing), len(requests),
                 len(missing), self.client.base_url)
        progress = _Progress(len(missing), 0, label)
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        stop = threading.Event()
        futures = {pool.submit(self._send_unless_stopped, r, stop): (k, r) for k, r in missing.items()}
        failure = None
        try:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in finished:
                    if f.cancelled() or isinstance(f.exception(), _NotSent):
                        continue
                    if f.exception() is None:  # every answer received is kept, even after a failure
                        k, _ = futures[f]
                        answers[k] = f.result()
                        self.cache.put(k, answers[k])
                        progress.update(1, answers[k]["tokens"])
                    elif failure is None:
                        failure = f
                        for other in pending:  # requests not sent yet never will be; those in flight finish
                            other.cancel()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.stats = progress.close()
        if failure is not None:
            raise self._failure(futures[failure][1], label, failure.exception()) from None
        return [Completion(**answers[k]) for k in keys]


BACKENDS = {"local": LocalChatBackend, "openai": OpenAIChatBackend}


def _file_digest(path) -> str:
    from dpinstruct.io.artifacts import file_digest

    return file_digest(path)


def _model_digest(model_path: str) -> str:
    """The weights' digest for a local folder (a changed model invalidates saved chunks), else the id."""
    folder = Path(model_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return hashlib.sha256("".join(_file_digest(f) for f in files).encode()).hexdigest() if files else model_path


def rate(stats: dict) -> str:
    seconds = stats.get("seconds") or math.nan
    return f"{stats.get('requests', 0) / seconds:.2f} requests/s, {stats.get('tokens', 0) / seconds:.1f} tokens/s"
