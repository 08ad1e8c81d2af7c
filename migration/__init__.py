"""The bridge from gRPC to quic_rpc: adapter, dual-stack serving, rollout."""
