"""An OpenAI-compatible chat endpoint as backend (llama.cpp server, vLLM, Ollama, hosted APIs).

``POST {base_url}/chat/completions`` with ``{"model", "messages", "temperature", "seed"}``;
the answer's ``choices[0].message.content`` must hold a JSON object (a fenced ```json block
is accepted). The key is read from the environment variable :data:`API_KEY_ENV` and sent as a
Bearer token when set. Connection errors, timeouts, HTTP 429 and 5xx are retried with a
growing pause; other HTTP errors and unusable answers fail at once with a one-line error.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass

from .errors import DescribeError, UnusableAnswer
from .prompt import defects_messages, ensemble_messages

#: Environment variable holding the endpoint's API key (optional for local servers).
API_KEY_ENV = "ANOMALENS_LLM_API_KEY"
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class EndpointSettings:
    """How the endpoint is called."""

    model: str = "default"  # the endpoint's model name (--llm-model)
    timeout: float = 60.0  # seconds per request (connect and read)
    retries: int = 2  # extra attempts after a connection error, timeout, 429 or 5xx
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    temperature: float = 0.7
    seed: int = 0


def _json_payload(content: str) -> object:
    """The JSON object in a chat answer (bare, or inside a ```json fence, or after some prose)."""
    fence = re.search(r"```(?:json)?\s*(.*?)```", content, re.S)
    text = fence.group(1) if fence else content
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            try:
                return json.loads(text[start : end + 1])
            except json.JSONDecodeError:
                pass
    raise UnusableAnswer(f"the model's answer is not JSON: {content[:120]!r}")


def _string_list(payload: object, key: str) -> list[str]:
    if isinstance(payload, list):  # some models answer the bare list
        items = payload
    elif isinstance(payload, dict) and isinstance(payload.get(key), list):
        items = payload[key]
    else:
        raise UnusableAnswer(f'the model\'s answer has no "{key}" list: {json.dumps(payload)[:120]}')
    return [str(item) for item in items if isinstance(item, (str, int, float))]


class EndpointBackend:
    """Defect lists and ensemble sentences from an OpenAI-compatible ``/v1`` endpoint."""

    name = "endpoint"

    def __init__(self, base_url: str, settings: EndpointSettings | None = None, transport=None) -> None:
        if not re.match(r"^https?://", base_url):
            raise DescribeError(f"--llm must be 'embedded' or an http(s):// URL ending in /v1, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.settings = settings or EndpointSettings()
        self.model_name = self.settings.model
        self._transport = transport

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def chat(self, messages: list[dict[str, str]], seed: int) -> str:
        """The content of the first choice; retried per :class:`EndpointSettings`."""
        import httpx

        s = self.settings
        headers = {"Content-Type": "application/json"}
        if os.environ.get(API_KEY_ENV):
            headers["Authorization"] = f"Bearer {os.environ[API_KEY_ENV]}"
        body = {"model": s.model, "messages": messages, "temperature": s.temperature, "seed": seed}
        last = ""
        for attempt in range(s.retries + 1):
            if attempt:
                time.sleep(s.backoff * 2 ** (attempt - 1))
            try:
                with httpx.Client(timeout=s.timeout, transport=self._transport) as client:
                    response = client.post(self.url, json=body, headers=headers)
            except httpx.TimeoutException:
                last = f"no answer within {s.timeout:g} s"
                continue
            except httpx.TransportError as err:
                last = f"cannot connect ({type(err).__name__}: {err})"
                continue
            if response.status_code in _RETRY_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:120]}"
                continue
            if response.status_code >= 400:
                hint = f" (set {API_KEY_ENV})" if response.status_code in (401, 403) else ""
                raise DescribeError(f"{self.url}: HTTP {response.status_code}{hint}: {response.text[:200]}")
            try:
                return str(response.json()["choices"][0]["message"]["content"])
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise DescribeError(
                    f"{self.url}: not an OpenAI chat completion ({type(err).__name__}): {response.text[:120]!r}"
                ) from err
        raise DescribeError(f"{self.url}: {last} (after {s.retries + 1} attempts)")

    def defect_items(self, category: str, n: int, context: str | None, attempt: int) -> list[str]:
        content = self.chat(defects_messages(category, n, context), seed=self.settings.seed + attempt)
        return _string_list(_json_payload(content), "defects")

    def sentences(self, kind: str, n: int, batch: int) -> list[str]:
        content = self.chat(ensemble_messages(kind, n, batch), seed=self.settings.seed + batch)
        return _string_list(_json_payload(content), "sentences")
