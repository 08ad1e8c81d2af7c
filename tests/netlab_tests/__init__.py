"""Tests of the network lab (tests/netlab) itself."""
