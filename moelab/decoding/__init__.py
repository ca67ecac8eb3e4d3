"""Decoding loops (autoregressive, speculative), registered as `decoding=<name>`."""
