"""Train moelab's own small MoE LM and its dense draft offline, on the Python source installed locally."""
