"""moelab: run Mixture-of-Experts models with their experts offloaded, and compare offloading policies."""

__version__ = "0.1.0"
