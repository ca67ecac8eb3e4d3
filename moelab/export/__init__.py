"""Writing moelab's weights in other systems' formats (GGUF for llama.cpp: `python -m moelab.export.gguf`)."""
