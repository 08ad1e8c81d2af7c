"""Shared by the benchmark tests that build network namespaces."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest


def require(available: Callable[[], tuple[bool, str]], what: str) -> None:
    """Skip (or, with QUICSHIFT_REQUIRE_NETNS=1, fail) unless ``available()`` says the
    namespaces ``what`` needs can be built."""
    ok, reason = available()
    if not ok:
        if os.environ.get("QUICSHIFT_REQUIRE_NETNS") == "1":
            pytest.fail(f"QUICSHIFT_REQUIRE_NETNS=1 but the {what} is unavailable: {reason}")
        pytest.skip(f"{what} unavailable: {reason}")


def namespaces() -> set[str]:
    """The network namespaces that exist now."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}
