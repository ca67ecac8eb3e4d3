"""Learned routing predictors (tensor code; the policies that use them live in moelab.policies.prefetch)."""
