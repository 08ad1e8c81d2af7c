"""The QUIC agent across real NATs: hole punching, relaying, rebinding (netns)."""
