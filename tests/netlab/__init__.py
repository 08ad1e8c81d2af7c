"""Network lab for tests: namespaces, NAT routers, a userspace link emulator, fixtures.

* ``namespaces.py`` - :class:`Lab` / :class:`Namespace` builder, ``netns_available()``
* ``nat.py``        - the NAT lab of shared/NETWORK-TESTING.md (``build_nat_lab``)
* ``linkemu.py``    - UDP link emulator (``LinkEmulator``; ``python -m tests.netlab.linkemu``)
* ``fixtures.py``   - pytest fixtures (``netlab``, ``nat_lab``, ``linkemu_factory``)

Names are re-exported lazily so that ``python -m tests.netlab.linkemu`` does not import
its own module twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DirectionStats": "linkemu",
    "Impairment": "linkemu",
    "LinkEmulator": "linkemu",
    "Lab": "namespaces",
    "Namespace": "namespaces",
    "NetlabError": "namespaces",
    "NetnsProcess": "namespaces",
    "netns_available": "namespaces",
    "sweep_stale": "namespaces",
    "NatKind": "nat",
    "NatLab": "nat",
    "build_nat_lab": "nat",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
