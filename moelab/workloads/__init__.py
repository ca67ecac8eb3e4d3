"""Workloads (prompts, generation length, reference text), registered as `workload=<name>`."""
