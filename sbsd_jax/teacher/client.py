"""A small OpenAI-compatible HTTP client for the teacher (stdlib only: urllib + json).

Users serve their teacher with vLLM, SGLang, TGI, llama.cpp, Ollama or a hosted API; all speak
`/v1/completions` and `/v1/chat/completions`. A teacher run sends thousands of requests over
hours, so transient failures are normal: 429 (honouring Retry-After), 5xx, 408, dropped or
refused connections, timeouts and garbled/truncated JSON bodies are retried with exponential
backoff and jitter. A 4xx that will fail again the same way (bad request, auth, unknown model)
raises `NonRetryableRequestError` at once, with the server's message.

The client is thread-safe (no shared connection state): the generator calls `complete` from a
bounded pool of worker threads.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

API_KEY_ENV = "OPENAI_API_KEY"
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")

# Statuses worth retrying: the same request can succeed later.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Statuses that mean every later request fails too (wrong key, wrong URL or model name):
# the generator aborts the run instead of recording one failure per example.
FATAL_STATUSES = frozenset({401, 403, 404})


class TeacherClientError(Exception):
    """Base class of the client's errors."""


class NonRetryableRequestError(TeacherClientError):
    """The server refused the request in a way a retry will not fix (a 4xx other than 408/409/
    425/429, or a 200 whose body is not a completion response at all)."""

    def __init__(self, status: int, message: str, url: str) -> None:
        self.status = status
        self.server_message = message
        self.url = url
        hint = ""
        if status == 401:
            hint = f" (set {API_KEY_ENV} or --api_key)"
        elif status == 404:
            hint = " (check --base_url, which should end in /v1, and --model)"
        super().__init__(f"HTTP {status} from {url}: {message}{hint}")

    @property
    def fatal(self) -> bool:
        """True when every other request of the run will fail the same way."""
        return self.status in FATAL_STATUSES


class RetriesExhaustedError(TeacherClientError):
    """Every attempt failed with a retryable error; `last_error` says how the last one failed."""

    def __init__(self, attempts: int, last_error: str, url: str) -> None:
        self.attempts = attempts
        self.last_error = last_error
        self.url = url
        super().__init__(f"{url}: gave up after {attempts} attempts; last error: {last_error}")


class _RetryableFailure(Exception):
    """Internal: one attempt failed in a way worth retrying; retry_after_s from the server."""

    def __init__(self, description: str, retry_after_s: float | None = None) -> None:
        super().__init__(description)
        self.retry_after_s = retry_after_s


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt k (0-based) waits
    min(max_backoff_s, initial_backoff_s * multiplier**k) scaled by a uniform factor in
    [1 - jitter, 1 + jitter]; a server's Retry-After replaces it (capped at max_retry_after_s)."""

    max_attempts: int = 8
    initial_backoff_s: float = 1.0
    multiplier: float = 2.0
    max_backoff_s: float = 60.0
    jitter: float = 0.25
    max_retry_after_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def backoff_s(self, retry_index: int, rng: random.Random) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**retry_index)
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0)))


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """What the teacher is asked for; all of it is part of a run's identity (the manifest)."""

    temperature: float = 0.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ("\n\nQ:",)
    n: int = 1
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n (samples per example) must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if len(self.stop) > 4:
            # The OpenAI API accepts at most 4 stop sequences; many servers copy the limit.
            raise ValueError(f"at most 4 stop sequences, got {len(self.stop)}: {self.stop!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "n": self.n,
            "top_p": self.top_p,
            "seed": self.seed,
        }


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Where the teacher lives. api_key None -> $OPENAI_API_KEY (or no Authorization header)."""

    base_url: str
    model: str
    api_key: str | None = None
    chat: bool = False
    timeout_s: float = 120.0
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    # Some servers ignore or cap `n`; the client asks again for the missing samples, at most
    # this many extra requests per call.
    max_top_up_requests: int = 8
    # The length limit's field: "max_tokens" (what most servers read) or
    # "max_completion_tokens" (what OpenAI's newer chat models require instead).
    max_tokens_field: str = "max_tokens"

    def __post_init__(self) -> None:
        if self.max_tokens_field not in MAX_TOKENS_FIELDS:
            raise ValueError(
                f"max_tokens_field must be one of {', '.join(MAX_TOKENS_FIELDS)}, "
                f"got {self.max_tokens_field!r}"
            )

    def resolved_api_key(self) -> str | None:
        return self.api_key if self.api_key is not None else os.environ.get(API_KEY_ENV) or None


@dataclasses.dataclass(frozen=True)
class Usage:
    """Token counts as the server reports them (0 when it does not)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(frozen=True)
class CompletionResult:
    """The `n` sampled texts of one prompt, in the order the server returned them."""

    texts: tuple[str, ...]
    finish_reasons: tuple[str | None, ...]
    usage: Usage
    requests: int  # HTTP requests that returned a completion (top-ups included)
    attempts: int  # HTTP attempts in total (retries included)
    served_model: str | None
    latency_s: float
    # Requests answered with fewer choices than their `n` (a server that ignores `n`; the
    # missing samples then come from further requests).
    short_responses: int = 0


ChatMessage = dict[str, str]


class OpenAICompatibleClient:
    """`complete(prompt, params)`: a text prompt for /completions, or a list of chat messages
    for /chat/completions (config.chat). Blocking and thread-safe."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        base = config.base_url.rstrip("/")
        self.url = f"{base}/chat/completions" if config.chat else f"{base}/completions"
        # Proxies come from the environment (hosted APIs behind a corporate proxy); no_proxy
        # is honoured, so a local server stays local.
        self._opener = urllib.request.build_opener()

    # ------------------------------------------------------------------ public

    def complete(
        self, prompt: str | Sequence[ChatMessage], params: SamplingParams
    ) -> CompletionResult:
        if self.config.chat and isinstance(prompt, str):
            raise TypeError("chat mode needs a list of messages, got a text prompt")
        if not self.config.chat and not isinstance(prompt, str):
            raise TypeError("completions mode needs a text prompt, got chat messages")
        start = time.monotonic()
        texts: list[str] = []
        finish: list[str | None] = []
        usage = Usage()
        requests = attempts = short_responses = 0
        served_model = None
        while len(texts) < params.n:
            if requests > self.config.max_top_up_requests:
                raise RetriesExhaustedError(
                    attempts,
                    f"server returned {len(texts)} of n={params.n} samples after "
                    f"{requests} requests",
                    self.url,
                )
            missing = params.n - len(texts)
            body = self._request_body(prompt, params, missing)
            response, used_attempts = self._post_with_retries(body)
            attempts += used_attempts
            requests += 1
            choices = _choices(response, self.url, self.config.chat)
            short_responses += len(choices) < missing
            for text, reason in choices[:missing]:
                texts.append(text)
                finish.append(reason)
            usage = usage + _usage(response)
            served_model = response.get("model", served_model)
        return CompletionResult(
            texts=tuple(texts),
            finish_reasons=tuple(finish),
            usage=usage,
            requests=requests,
            attempts=attempts,
            served_model=served_model if isinstance(served_model, str) else None,
            latency_s=time.monotonic() - start,
            short_responses=short_responses,
        )

    # ------------------------------------------------------------------ internals

    def _request_body(
        self, prompt: str | Sequence[ChatMessage], params: SamplingParams, n: int
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "temperature": params.temperature,
            self.config.max_tokens_field: params.max_tokens,
            "n": n,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.seed is not None:
            body["seed"] = params.seed
        if self.config.chat:
            body["messages"] = list(prompt)
        else:
            body["prompt"] = prompt
        return body

    def _post_with_retries(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        policy = self.config.retry
        data = json.dumps(body).encode("utf-8")
        last = "no attempt"
        for attempt in range(policy.max_attempts):
            try:
                return self._post_once(data), attempt + 1
            except _RetryableFailure as failure:
                last = str(failure)
                if attempt + 1 == policy.max_attempts:
                    break
                if failure.retry_after_s is not None:
                    delay = min(failure.retry_after_s, policy.max_retry_after_s)
                else:
                    with self._rng_lock:
                        delay = policy.backoff_s(attempt, self._rng)
                self._sleep(delay)
        raise RetriesExhaustedError(policy.max_attempts, last, self.url)

    def _post_once(self, data: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        api_key = self.config.resolved_api_key()
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            _raise_for_http_error(error, self.url)
            raise  # unreachable: _raise_for_http_error always raises
        except TimeoutError as error:
            raise _RetryableFailure(
                f"timed out after {self.config.timeout_s}s ({error})"
            ) from error
        except urllib.error.URLError as error:
            raise _RetryableFailure(f"connection error: {error.reason}") from error
        except (http.client.HTTPException, ConnectionError, OSError) as error:
            # IncompleteRead (body shorter than Content-Length), RemoteDisconnected, resets.
            raise _RetryableFailure(f"connection error: {type(error).__name__}: {error}") from error
        try:
            parsed = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise _RetryableFailure(
                f"response is not complete JSON ({error}; {len(raw)} bytes)"
            ) from error
        if not isinstance(parsed, dict):
            raise _RetryableFailure(f"response JSON is a {type(parsed).__name__}, not an object")
        if not isinstance(parsed.get("choices"), list):
            # A cut-off or garbled body that still happens to be JSON, or a 200 carrying an
            # error object (some proxies do this when the backend is overloaded).
            detail = _server_message(json.dumps(parsed.get("error", parsed)))[:200]
            raise _RetryableFailure(f"response has no 'choices' list: {detail}")
        return parsed


def _raise_for_http_error(error: urllib.error.HTTPError, url: str) -> None:
    status = error.code
    try:
        body = error.read().decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException):
        body = ""
    message = _server_message(body) or error.reason or "no message"
    if status in RETRYABLE_STATUSES or status >= 500:
        retry_after = parse_retry_after(error.headers.get("Retry-After") if error.headers else None)
        raise _RetryableFailure(f"HTTP {status}: {message}", retry_after) from error
    raise NonRetryableRequestError(status, str(message), url) from error


def _server_message(body: str) -> str:
    """OpenAI-style {"error": {"message": ...}}, a plain {"detail"/"message": ...}, or text."""
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()[:500]
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:500]
        for key in ("error", "detail", "message"):
            if key in parsed:
                return str(parsed[key])[:500]
    return body.strip()[:500]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _choices(response: dict[str, Any], url: str, chat: bool) -> list[tuple[str, str | None]]:
    """(text, finish_reason) per choice, ordered by `index` (checked to be a list already)."""
    choices = response["choices"]
    out: list[tuple[int, str, str | None]] = []
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise NonRetryableRequestError(200, f"choice {position} is not an object", url)
        if chat:
            message = choice.get("message") or {}
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        index = choice.get("index", position)
        index = index if isinstance(index, int) else position
        out.append((index, text or "", choice.get("finish_reason")))
    out.sort(key=lambda item: item[0])
    return [(text, reason) for _, text, reason in out]


def _usage(response: dict[str, Any]) -> Usage:
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return Usage()

    def count(key: str) -> int:
        value = usage.get(key)
        return int(value) if isinstance(value, int | float) else 0

    return Usage(count("prompt_tokens"), count("completion_tokens"))
