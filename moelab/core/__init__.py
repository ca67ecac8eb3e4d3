"""Registry, errors and the plain data types every layer shares."""
