"""The bridge from gRPC to quic_rpc: adapter, dual-stack serving, rollout.

* :mod:`migration.quic_grpc` — grpcio's API (sync and ``aio``) over quic_rpc on QUIC:
  ``from migration import quic_grpc as grpc`` runs unmodified generated stubs and
  servicers over QUIC; its ``descriptor`` module binds services from protobuf descriptors
  (no grpcio needed) and its ``health`` module serves ``grpc.health.v1`` on every stack.
"""
