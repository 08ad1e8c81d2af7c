"""The legacy stack: gRPC agent server/client and the TLS proxy pair. Deleted at cutover."""
