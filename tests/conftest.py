"""Shared pytest configuration for the whole suite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# CI runs as root and must run the network-namespace tests; a developer machine
# without root skips them with a reason. QUICSHIFT_REQUIRE_NETNS=1 turns a skip into a failure.
REQUIRE_NETNS = os.environ.get("QUICSHIFT_REQUIRE_NETNS") == "1"
