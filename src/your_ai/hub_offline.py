"""Whether the Hugging Face Hub can be reached, and switching the Hugging Face libraries to their local
caches when it cannot, so a command that fetches from the Hub (``download``, ``validate --lm-eval``) fails or
falls back at once instead of spending its libraries' retries on a machine without a network.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import urllib.parse

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
HUB_PROBE_SECONDS = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"


def _is_set(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in TRUE_VALUES


def hub_address() -> tuple[str | None, int]:
    """Where a connection to the Hub goes first: the proxy for its scheme when one is set
    (``HTTPS_PROXY``, ``HTTP_PROXY``), else ``HF_ENDPOINT`` (default huggingface.co)."""
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    variable = f"{endpoint.scheme}_proxy"
    proxy = os.environ.get(variable.upper()) or os.environ.get(variable)
    if proxy:
        endpoint = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the Hub (``hub_address``) opens within ``timeout`` seconds, name
    resolution included (a thread bounds it)."""
    host, port = hub_address()
    reached: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            reached.append(True)
        except (OSError, ValueError):
            reached.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reached and reached[0])


def go_offline() -> None:
    """Set ``HF_HUB_OFFLINE`` and ``HF_DATASETS_OFFLINE``, also in the Hugging Face modules already imported
    (they read the variables when imported), so data come from the local caches at once."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    for module, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        loaded = sys.modules.get(module)
        for name in names if loaded is not None else ():
            setattr(loaded, name, True)


def offline_reason() -> str | None:
    """Why data and models come from the local caches alone (None when the Hub is used): an offline
    variable set, or the Hub unreachable, in which case the variables are set (``go_offline``)."""
    for name in OFFLINE_VARIABLES:
        if _is_set(name):
            return f"{name} is set"
    if hub_reachable():
        return None
    go_offline()
    return "the Hugging Face Hub cannot be reached"
