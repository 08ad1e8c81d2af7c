"""Make the network-lab fixtures available to these tests."""

from tests.netlab.fixtures import linkemu_factory, nat_lab, netlab

__all__ = ["linkemu_factory", "nat_lab", "netlab"]
