"""Prefetch policies, one module each; registered as `prefetch=<name>`."""
