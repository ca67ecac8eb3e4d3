"""Measurements fed the events the policies see; they decide nothing. Adding a metric is one file here."""
