"""Where a run's routing comes from: the model's own routers (`native`) or a recorded trace (`replay`)."""
