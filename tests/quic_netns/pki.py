"""A throw-away CA with a server and a client leaf, written as PEM files for the runners."""

from __future__ import annotations

from pathlib import Path

from quic_rpc.testing.pki import PemFiles, issue_server_and_client

__all__ = ["PkiFiles", "write_pki"]


class PkiFiles(PemFiles):
    def args(self, role: str) -> list[str]:
        """Command-line arguments for ``tests.quic_netns.peer`` in ``role``."""
        cert, key = self.cert_and_key("server" if role == "server" else "client")
        return ["--ca", str(self.ca), "--cert", str(cert), "--key", str(key)]


def write_pki(directory: Path, server_hosts: tuple[str, ...] = ("server",)) -> PkiFiles:
    certs = issue_server_and_client(
        "quic-netns-ca", server_hosts=server_hosts, client_hosts=("client",)
    )
    return PkiFiles.write(directory, certs)
