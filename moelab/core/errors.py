"""Errors a user can cause; the entry points print them as one line instead of a traceback."""


class MoelabError(Exception):
    """Base class for errors caused by input (config, paths, checkpoints), not by bugs."""


class ConfigError(MoelabError, ValueError):
    """A config value is missing, malformed or out of range."""


class UnknownComponentError(ConfigError):
    """A component name is not registered."""


class CheckpointError(MoelabError):
    """A model directory or its weights cannot be used."""


class MissingDependencyError(MoelabError, ImportError):
    """An optional package that a feature needs is not installed (the message says how to install it)."""


class ResultsError(MoelabError):
    """The results folder or a results file cannot be written or read (the message names it and what to do)."""
