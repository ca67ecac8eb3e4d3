"""Where run results go, registered as `logger=<name>`."""
