"""The executor: the only code that knows about pinned memory, GPU slots, streams and events."""
