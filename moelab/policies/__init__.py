"""Decision logic: what to prefetch, what to evict, where to compute. Pure Python, no CUDA."""
