"""Cache (eviction) policies, one module each; registered as `cache=<name>`."""
