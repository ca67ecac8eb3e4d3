"""moelab: run Mixture-of-Experts models with their experts offloaded, and compare offloading policies."""

from moelab.resolvers import register as _register_resolvers

__version__ = "0.1.0"

_register_resolvers()  # `${moelab.trace:...}` in conf/experiment/ resolves in every process that imports moelab
