"""quic_rpc: the new stack — a transport-agnostic RPC (``quic_rpc.rpc``) and a QUIC
transport (``quic_rpc.quic``). Imports and runs with grpcio absent."""
