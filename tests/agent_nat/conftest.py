"""Make the network-lab fixtures available to these tests."""

from tests.netlab.fixtures import nat_lab, netlab

__all__ = ["nat_lab", "netlab"]
