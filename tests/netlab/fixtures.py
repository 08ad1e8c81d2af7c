"""pytest fixtures for the network lab.

Load as a plugin (``pytest_plugins = ["tests.netlab.fixtures"]`` in the root conftest) or
import the fixtures into a directory's ``conftest.py``.

* ``netlab``          - an empty :class:`~tests.netlab.namespaces.Lab`, torn down after the test
* ``nat_lab``         - factory ``nat_lab(nat_a="cone", nat_b="cone", firewall=True) -> NatLab``
* ``linkemu_factory`` - async factory ``await linkemu_factory(target, c2s=..., s2c=...,
                        listen=("127.0.0.1", 0), **kw) -> LinkEmulator`` (in-process), closed
                        after the test

Tests that need namespaces skip with the reason when this machine cannot build them
(not root, tools missing) - except when ``QUICSHIFT_REQUIRE_NETNS=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from .linkemu import Impairment, LinkEmulator
from .namespaces import Lab, netns_available, sweep_stale
from .nat import NatKind, NatLab, build_nat_lab

__all__ = ["linkemu_factory", "nat_lab", "netlab", "require_netns"]

_swept = False


def require_netns() -> None:
    """Skip (or, with QUICSHIFT_REQUIRE_NETNS=1, fail) unless namespaces can be built."""
    global _swept
    ok, reason = netns_available()
    if not ok:
        if os.environ.get("QUICSHIFT_REQUIRE_NETNS") == "1":
            pytest.fail(f"QUICSHIFT_REQUIRE_NETNS=1 but network namespaces unavailable: {reason}")
        pytest.skip(f"network namespaces unavailable: {reason}")
    if not _swept:
        _swept = True
        sweep_stale()


@pytest.fixture
async def netlab(request: pytest.FixtureRequest) -> AsyncIterator[Lab]:
    """An empty Lab; its processes are stopped and its namespaces deleted afterwards."""
    require_netns()
    tag = re.sub(r"[^A-Za-z0-9]", "", request.node.name)[-10:]
    lab = Lab(tag)
    try:
        yield lab
    finally:
        try:
            await lab.stop_processes()
        finally:
            lab.teardown()


@pytest.fixture
def nat_lab(netlab: Lab) -> Callable[..., NatLab]:
    built: list[NatLab] = []

    def make(nat_a: NatKind = "cone", nat_b: NatKind = "cone", firewall: bool = True) -> NatLab:
        if built:
            raise RuntimeError("nat_lab() can be built once per test")
        nl = build_nat_lab(netlab, nat_a, nat_b, firewall)
        built.append(nl)
        return nl

    return make


@pytest.fixture
async def linkemu_factory() -> AsyncIterator[Callable[..., Awaitable[LinkEmulator]]]:
    emus: list[LinkEmulator] = []

    async def make(
        target: tuple[str, int],
        *,
        c2s: Impairment | None = None,
        s2c: Impairment | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        **kwargs: Any,
    ) -> LinkEmulator:
        emu = LinkEmulator(listen, target, c2s, s2c, **kwargs)
        await emu.start()
        emus.append(emu)
        return emu

    try:
        yield make
    finally:
        for emu in emus:
            await emu.close()
