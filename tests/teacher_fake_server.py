"""A scripted OpenAI-compatible server on 127.0.0.1 for the teacher tests (real HTTP, stdlib).

`FakeTeacherServer(answer)` serves POST {base}/completions and {base}/chat/completions. `answer`
maps the question being asked (the text after the last "Q: " / "Premise: " of the prompt, or
the last user message in chat mode) and the sample index to a completion text. Faults are
scripted per question: `server.add_faults("apples", Fault.status(500), Fault.hang(1.0))` makes
the first two requests whose question contains "apples" fail that way; later ones are answered.
Every request is recorded (path, headers, JSON body) for assertions.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[str, int], str]


@dataclasses.dataclass(frozen=True)
class Fault:
    """One scripted failure of one request."""

    kind: str  # 'status' | 'hang' | 'truncate' | 'garbage' | 'disconnect' | 'empty' | 'no_choices'
    status: int = 500
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    message: str = "scripted failure"

    @staticmethod
    def status_code(status: int, retry_after: str | None = None, message: str = "") -> Fault:
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return Fault("status", status=status, headers=headers, message=message or f"HTTP {status}")

    @staticmethod
    def hang(seconds: float) -> Fault:
        """Answer only after `seconds` (longer than the client's timeout)."""
        return Fault("hang", seconds=seconds)

    @staticmethod
    def truncate() -> Fault:
        """Send half of a valid body with the full Content-Length, then close."""
        return Fault("truncate")

    @staticmethod
    def garbage() -> Fault:
        """A 200 whose body is cut-off JSON with a matching Content-Length."""
        return Fault("garbage")

    @staticmethod
    def disconnect() -> Fault:
        """Close the connection without any response."""
        return Fault("disconnect")

    @staticmethod
    def empty() -> Fault:
        """A well-formed response whose completion text is empty."""
        return Fault("empty")

    @staticmethod
    def no_choices() -> Fault:
        """A 200 JSON object without 'choices' (an error object some proxies send)."""
        return Fault("no_choices")


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    question: str
    time: float


def question_of(body: dict[str, Any]) -> str:
    """The question the teacher is asked: the last few-shot block of the prompt."""
    if "messages" in body:
        users = [m["content"] for m in body["messages"] if m.get("role") == "user"]
        return users[-1] if users else ""
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        return ""
    blocks = prompt.split("\n\n")
    return blocks[-1]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out or get killed hang up mid-response: expected here."""


class FakeTeacherServer:
    """Context manager: `with FakeTeacherServer(answer) as server: server.base_url ...`."""

    def __init__(
        self,
        answer: Answer,
        *,
        model: str = "fake-teacher",
        ignore_stop: bool = False,
        delay_s: float = 0.0,
        max_choices: int | None = None,
        required_api_key: str | None = None,
    ) -> None:
        self.answer = answer
        self.model = model
        self.ignore_stop = ignore_stop
        self.delay_s = delay_s
        self.max_choices = max_choices
        self.required_api_key = required_api_key
        self.requests: list[RecordedRequest] = []
        self._faults: list[tuple[str, list[Fault]]] = []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add_faults(self, question_contains: str, *faults: Fault) -> None:
        with self._lock:
            self._faults.append((question_contains, list(faults)))

    def start(self) -> FakeTeacherServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeTeacherServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def questions_asked(self) -> list[str]:
        with self._lock:
            return [r.question for r in self.requests]

    # ---------------------------------------------------------------- internals

    def _next_fault(self, question: str) -> Fault | None:
        with self._lock:
            for needle, queue in self._faults:
                if needle in question and queue:
                    return queue.pop(0)
        return None

    def _response(self, body: dict[str, Any], empty: bool) -> dict[str, Any]:
        question = question_of(body)
        n = int(body.get("n", 1))
        if self.max_choices is not None:
            n = min(n, self.max_choices)
        chat = "messages" in body
        stops = body.get("stop") or []
        choices = []
        for index in range(n):
            text = "" if empty else self.answer(question, index)
            if not self.ignore_stop:
                for stop in stops:
                    text = text.split(stop)[0]
            if chat:
                choices.append(
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                )
            else:
                choices.append({"index": index, "text": text, "finish_reason": "stop"})
        prompt_tokens = len(json.dumps(body.get("prompt", body.get("messages", ""))).split())
        completion_tokens = sum(
            len((c.get("text") or c.get("message", {}).get("content", "")).split()) for c in choices
        )
        return {
            "id": "cmpl-fake",
            "object": "chat.completion" if chat else "text_completion",
            "model": self.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def _send_json(self, status: int, payload: Any, headers=()) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length).decode("utf-8"))
                question = question_of(body)
                with server._lock:
                    server.requests.append(
                        RecordedRequest(
                            self.path, dict(self.headers.items()), body, question, time.monotonic()
                        )
                    )
                if not self.path.endswith(("/completions", "/chat/completions")):
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                expected_auth = f"Bearer {server.required_api_key}"
                if (
                    server.required_api_key is not None
                    and self.headers.get("Authorization") != expected_auth
                ):
                    self._send_json(401, {"error": {"message": "invalid api key"}})
                    return
                if body.get("model") != server.model:
                    self._send_json(
                        404, {"error": {"message": f"model {body.get('model')!r} not found"}}
                    )
                    return
                if server.delay_s:
                    time.sleep(server.delay_s)
                fault = server._next_fault(question)
                if fault is None or fault.kind in ("empty",):
                    self._send_json(200, server._response(body, empty=fault is not None))
                    return
                if fault.kind == "status":
                    self._send_json(
                        fault.status, {"error": {"message": fault.message}}, fault.headers
                    )
                elif fault.kind == "hang":
                    time.sleep(fault.seconds)
                    self._send_json(200, server._response(body, empty=False))
                elif fault.kind == "no_choices":
                    self._send_json(200, {"error": {"message": "upstream overloaded"}})
                elif fault.kind in ("truncate", "garbage"):
                    data = json.dumps(server._response(body, empty=False)).encode("utf-8")
                    half = data[: len(data) // 2]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    announced = len(data) if fault.kind == "truncate" else len(half)
                    self.send_header("Content-Length", str(announced))
                    self.end_headers()
                    self.wfile.write(half)
                    self.wfile.flush()
                    self.close_connection = True
                elif fault.kind == "disconnect":
                    self.close_connection = True
                    self.connection.close()

        return Handler


# ------------------------------------------------------------------ scripted answers


def svamp_like_answer(question: str, sample: int) -> str:
    """A correct-looking SVAMP completion for 'What is A plus B?'-style questions, followed by a
    continuation into a next question (cut by the stop sequence unless the server ignores it)."""
    numbers = [int(t) for t in question.replace("?", " ").split() if t.isdigit()]
    a, b = (numbers + [0, 0])[:2]
    return f"We add {a} and {b}. The answer is ({a} + {b}).\n\nQ: What is 1 plus 1?\nA: We add"
