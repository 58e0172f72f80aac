"""An OpenAI-compatible chat-completions server on 127.0.0.1 for tests and benchmarks.

``FakeOpenAI(behaviour)`` serves POST /v1/chat/completions; ``behaviour(n, body)`` decides the
reply to the n-th request (0-based) from its JSON body and returns a ``Reply``. By default every
request is answered with a deterministic text derived from its messages, so a test can check
that each row got its own answer. Every request body is recorded in ``requests``.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: bytes | None = None        # raw body; None = a chat completion with ``content``
    content: str | None = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0               # seconds to wait before answering (timeouts, latency)


def answer_for(body: dict) -> str:
    text = json.dumps(body["messages"], sort_keys=True)
    return "answer " + hashlib.sha256(text.encode()).hexdigest()[:12]


def completion(body: dict, content: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": len(content.split()), "total_tokens": 10 + len(content.split())},
    }).encode()


def ok(n: int, body: dict) -> Reply:
    return Reply(content=answer_for(body))


class FakeOpenAI:
    def __init__(self, behaviour=ok):
        self.behaviour, self.requests, self._lock = behaviour, [], threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    n = len(server.requests)
                    server.requests.append(body)
                reply = server.behaviour(n, body)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = reply.body if reply.body is not None else (
                    completion(body, reply.content) if reply.status == 200 else
                    json.dumps({"error": {"message": f"status {reply.status}", "type": "test"}}).encode())
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
