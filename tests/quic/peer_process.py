"""A QUIC echo server in its own process (killed with SIGKILL by tests; benchmarks too).

Usage: python -m tests.quic.peer_process ROOT_PEM_FILE KEY_PEM_FILE CHAIN_PEM_FILE
Prints the bound port on stdout, then serves until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from quic_rpc.quic import QUICConfig, QUICServer, QUICSocket, TLSCredentials, ca_verifier

from .helpers import echo_handler


async def main(root: bytes, key: bytes, chain: bytes) -> None:
    creds = TLSCredentials.load(key, chain, ca_verifier(root))
    sock = await QUICSocket.bind("127.0.0.1", 0)
    server = QUICServer(sock, creds, QUICConfig(), echo_handler)
    await server.start()
    print(sock.local_address[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*(Path(arg).read_bytes() for arg in sys.argv[1:4])))
