"""A polite HTTP client for the public archives: a minimum interval between requests to one host, retries with
exponential back-off on 429, 5xx, timeouts, dropped connections and truncated bodies (honouring Retry-After),
and a User-Agent that names your-ai.

Settings come from the environment (``Settings.from_environment``), so a mirror or a test server can stand in
for the real hosts; ``docs/download.md`` lists the variables.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from your_ai import __version__
from your_ai.environment import env_number
from your_ai.errors import UserError

USER_AGENT = f"your-ai/{__version__} (curated corpus download; https://pypi.org/project/your-ai/)"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchError(Exception):
    """A request that failed for good (after its retries, or with a status not worth retrying)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Settings:
    """How downloads reach their sources. Each field has an environment variable (``ENVIRONMENT``)."""

    interval: float = 1.0  # seconds between the starts of two requests to one host
    retries: int = 5  # further attempts after a failed request
    backoff: float = 2.0  # first wait after a failure; doubles with each attempt
    max_wait: float = 300.0  # longest single wait (a longer Retry-After is cut to it)
    timeout: float = 60.0  # seconds a request may take
    archive_url: str = "https://archive.org"
    chronam_url: str = "https://chroniclingamerica.loc.gov"
    sources_dir: Path | None = None  # local files per Hugging Face source, instead of the hub

    @classmethod
    def from_environment(cls, environ=None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, variable in ENVIRONMENT.items():
            value = _setting(name, variable, environ)
            if value is not None:
                values[name] = value
        return cls(**values)


ENVIRONMENT = {
    "interval": "YOUR_AI_DOWNLOAD_INTERVAL",
    "retries": "YOUR_AI_DOWNLOAD_RETRIES",
    "backoff": "YOUR_AI_DOWNLOAD_BACKOFF",
    "max_wait": "YOUR_AI_DOWNLOAD_MAX_WAIT",
    "timeout": "YOUR_AI_DOWNLOAD_TIMEOUT",
    "archive_url": "YOUR_AI_ARCHIVE_URL",
    "chronam_url": "YOUR_AI_CHRONAM_URL",
    "sources_dir": "YOUR_AI_SOURCES_DIR",
}


def _setting(name: str, variable: str, environ):
    """The setting ``name`` from its environment variable; None when the variable is unset or empty."""
    text = environ.get(variable)
    if name.endswith("_url"):
        if not text:
            return None
        if not text.startswith(("http://", "https://")):
            raise UserError(f"{variable}={text!r} is not an http:// or https:// address")
        return text.rstrip("/")
    if name == "sources_dir":
        return Path(text).expanduser() if text else None
    return env_number(variable, None, whole=name == "retries", error=UserError, environ=environ)


class Client:
    """GET requests with the politeness and retries of ``Settings``. Safe to share between threads."""

    def __init__(self, settings: Settings, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self._sleep = sleep
        self._last_start: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, url: str, headers: dict[str, str] | None = None) -> bytes:
        """The body of ``url``; ``FetchError`` once the retries are spent or for a status not retried (404)."""
        reason, wait = "", 0.0
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self._sleep(min(wait, self.settings.max_wait))
            self._take_turn(url)
            try:
                return self._request(url, headers or {})
            except urllib.error.HTTPError as error:
                if error.code not in RETRY_STATUSES:
                    raise FetchError(f"{_shown(url)}: HTTP {error.code} {error.reason}",
                                     status=error.code) from None
                reason = f"HTTP {error.code} {error.reason}"
                wait = _retry_after(error.headers) or self._backoff(attempt)
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, truncated
                reason = _describe(error)
                wait = self._backoff(attempt)
        raise FetchError(f"{_shown(url)}: {reason} (gave up after {self.settings.retries + 1} attempts)")

    def get_json(self, url: str) -> Any:
        """``get`` decoded as JSON; a body that is not JSON (cut short without notice) counts as a failed attempt."""
        for attempt in range(self.settings.retries + 1):
            body = self.get(url)
            try:
                return json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                if attempt == self.settings.retries:
                    raise FetchError(f"{_shown(url)}: the answer is not JSON ({error})") from None
                self._sleep(min(self._backoff(attempt), self.settings.max_wait))

    def _backoff(self, attempt: int) -> float:
        return self.settings.backoff * 2 ** attempt

    def _take_turn(self, url: str) -> None:
        """Wait until ``interval`` seconds have passed since the last request to the same host began."""
        host = urllib.parse.urlsplit(url).netloc
        with self._lock:
            now = time.monotonic()
            start = max(now, self._last_start.get(host, -float("inf")) + self.settings.interval)
            self._last_start[host] = start
        if start > now:
            self._sleep(start - now)

    def _request(self, url: str, headers: dict[str, str]) -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
        with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
            body = response.read()  # http.client raises IncompleteRead for a body shorter than announced
            expected = response.headers.get("Content-Length")
            if expected and expected.isdigit() and len(body) < int(expected):
                raise http.client.IncompleteRead(body, int(expected) - len(body))
            return body


def _retry_after(headers) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date); None without one."""
    value = (headers or {}).get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _shown(url: str, longest: int = 100) -> str:
    """``url`` as an error shows it: a long query is left out."""
    return url if len(url) <= longest else url.split("?", 1)[0] + "?..."


def _describe(error: BaseException) -> str:
    if isinstance(error, http.client.IncompleteRead):
        return f"body cut short ({len(error.partial)} bytes read, {error.expected} more expected)"
    if isinstance(error, urllib.error.URLError):
        return f"cannot connect ({error.reason})"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
