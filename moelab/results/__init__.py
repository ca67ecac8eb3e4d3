"""Results rows and per-step tables: schema, atomic writes, loading."""
