"""Whether the Hugging Face hub can be reached (nothing is ever downloaded when it cannot)."""

from __future__ import annotations

import os
import socket

HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set, or when ``huggingface.co:443`` does not answer
    within ``timeout_s`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout_s):
            return True
    except OSError:
        return False
