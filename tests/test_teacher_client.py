"""The OpenAI-compatible client against a scripted server on 127.0.0.1 (real HTTP): transient
faults are retried with backoff (Retry-After honoured), a 4xx that cannot succeed is reported
at once with the server's message."""

import pytest
from teacher_fake_server import FakeTeacherServer, Fault

from sbsd_jax.teacher.client import (
    ClientConfig,
    NonRetryableRequestError,
    OpenAICompatibleClient,
    RetriesExhaustedError,
    RetryPolicy,
    SamplingParams,
    parse_retry_after,
)

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


def echo_answer(question: str, sample: int) -> str:
    return f"answer {sample} to [{question}]\n\nQ: next question"


@pytest.fixture
def server():
    with FakeTeacherServer(echo_answer) as running:
        yield running


class RecordingSleep:
    def __init__(self):
        self.delays = []

    def __call__(self, seconds):
        self.delays.append(seconds)


def make_client(server, *, chat=False, timeout_s=2.0, retry=FAST_RETRY, api_key=None, sleep=None):
    config = ClientConfig(
        server.base_url,
        "fake-teacher",
        api_key=api_key,
        chat=chat,
        timeout_s=timeout_s,
        retry=retry,
    )
    return OpenAICompatibleClient(config, sleep=sleep or (lambda s: None), seed=0)


def test_completion_request_carries_model_prompt_and_sampling(server):
    params = SamplingParams(temperature=0.7, max_tokens=64, stop=("\n\nQ:",), n=1, seed=3)
    result = make_client(server).complete("Q: What is 1 + 1?\nA:", params)
    assert result.texts == ("answer 0 to [Q: What is 1 + 1?\nA:]",)  # server applied the stop
    assert result.finish_reasons == ("stop",)
    assert result.usage.completion_tokens > 0 and result.usage.prompt_tokens > 0
    (request,) = server.requests
    assert request.path == "/v1/completions"
    assert request.body == {
        "model": "fake-teacher",
        "prompt": "Q: What is 1 + 1?\nA:",
        "temperature": 0.7,
        "max_tokens": 64,
        "n": 1,
        "stop": ["\n\nQ:"],
        "seed": 3,
    }


def test_chat_mode_posts_messages_to_chat_completions(server):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Q: hi"}]
    result = make_client(server, chat=True).complete(messages, SamplingParams())
    assert result.texts == ("answer 0 to [Q: hi]",)
    assert server.requests[0].path == "/v1/chat/completions"
    assert server.requests[0].body["messages"] == messages


def test_n_samples_come_back_in_index_order_and_are_topped_up_if_the_server_caps_n():
    with FakeTeacherServer(echo_answer, max_choices=2) as capped:
        result = make_client(capped).complete("Q: x\nA:", SamplingParams(n=5))
    assert len(result.texts) == 5
    assert [r.body["n"] for r in capped.requests] == [5, 3, 1]
    assert result.requests == 3


def test_api_key_from_the_environment_is_sent_as_bearer_token(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeTeacherServer(echo_answer, required_api_key="sk-test") as secured:
        make_client(secured).complete("Q: x\nA:", SamplingParams())
        assert secured.requests[0].headers["Authorization"] == "Bearer sk-test"
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeTeacherServer(echo_answer, required_api_key="sk-test") as secured:
        with pytest.raises(NonRetryableRequestError, match="401.*invalid api key.*OPENAI_API_KEY"):
            make_client(secured).complete("Q: x\nA:", SamplingParams())
        assert len(secured.requests) == 1  # not retried


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status_code(500),
        Fault.status_code(502),
        Fault.status_code(503),
        Fault.status_code(408),
        Fault.truncate(),
        Fault.garbage(),
        Fault.disconnect(),
        Fault.no_choices(),
    ],
    ids=lambda f: f"{f.kind}-{f.status}",
)
def test_transient_faults_are_retried_until_the_answer_arrives(server, fault):
    server.add_faults("question", fault, fault)
    sleep = RecordingSleep()
    result = make_client(server, sleep=sleep).complete("Q: question\nA:", SamplingParams())
    assert result.texts == ("answer 0 to [Q: question\nA:]",)
    assert result.attempts == 3 and len(server.requests) == 3
    assert len(sleep.delays) == 2
    assert sleep.delays[1] > sleep.delays[0]  # exponential (jitter is +-25% of a doubling)


def test_a_timeout_is_retried(server):
    server.add_faults("slow", Fault.hang(1.0))
    result = make_client(server, timeout_s=0.2).complete("Q: slow\nA:", SamplingParams())
    assert result.attempts == 2
    assert result.texts[0].startswith("answer 0")


def test_429_waits_as_long_as_retry_after_says(server):
    server.add_faults(
        "busy", Fault.status_code(429, retry_after="7"), Fault.status_code(429, retry_after="0.5")
    )
    sleep = RecordingSleep()
    result = make_client(server, sleep=sleep).complete("Q: busy\nA:", SamplingParams())
    assert sleep.delays == [7.0, 0.5]
    assert result.attempts == 3


def test_429_with_retry_after_really_waits(server):
    server.add_faults("busy", Fault.status_code(429, retry_after="0.3"))
    client = make_client(server, sleep=__import__("time").sleep)
    client.complete("Q: busy\nA:", SamplingParams())
    first, second = server.requests
    assert second.time - first.time >= 0.3


def test_giving_up_after_max_attempts_says_how_the_last_attempt_failed(server):
    server.add_faults("down", *[Fault.status_code(503, message="overloaded")] * 10)
    with pytest.raises(RetriesExhaustedError, match="4 attempts.*HTTP 503: overloaded"):
        make_client(server).complete("Q: down\nA:", SamplingParams())
    assert len(server.requests) == 4


def test_connection_refused_is_retried_then_reported():
    with FakeTeacherServer(echo_answer) as gone:
        url = gone.base_url
    client = OpenAICompatibleClient(
        ClientConfig(url, "fake-teacher", retry=FAST_RETRY), sleep=lambda s: None
    )
    with pytest.raises(RetriesExhaustedError, match="connection error"):
        client.complete("Q: x\nA:", SamplingParams())


@pytest.mark.parametrize("status", [400, 422])
def test_a_bad_request_is_not_retried_and_carries_the_server_message(server, status):
    server.add_faults("long", Fault.status_code(status, message="prompt is too long"))
    with pytest.raises(NonRetryableRequestError, match=f"HTTP {status}.*prompt is too long") as e:
        make_client(server).complete("Q: long\nA:", SamplingParams())
    assert len(server.requests) == 1 and not e.value.fatal


def test_an_unknown_model_is_a_fatal_error_with_a_hint(server):
    client = OpenAICompatibleClient(ClientConfig(server.base_url, "no-such-model"))
    with pytest.raises(NonRetryableRequestError, match="404.*no-such-model.*--model") as error:
        client.complete("Q: x\nA:", SamplingParams())
    assert error.value.fatal


def test_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_backoff_grows_exponentially_up_to_the_cap():
    import random

    policy = RetryPolicy(initial_backoff_s=1.0, multiplier=2.0, max_backoff_s=5.0, jitter=0.0)
    rng = random.Random(0)
    assert [policy.backoff_s(k, rng) for k in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = RetryPolicy(initial_backoff_s=1.0, jitter=0.25)
    delays = [jittered.backoff_s(0, rng) for _ in range(200)]
    assert 0.75 <= min(delays) < max(delays) <= 1.25


def test_sampling_params_are_checked():
    with pytest.raises(ValueError, match="n"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="at most 4 stop"):
        SamplingParams(stop=("a", "b", "c", "d", "e"))
