"""Adapters that turn an HF MoE model into an offloaded one, and the model loaders."""
