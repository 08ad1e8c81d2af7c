"""Generated protobuf/gRPC modules and their .proto sources."""
