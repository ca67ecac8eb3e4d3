"""One adapter per architecture family, registered as `model` components by HF `model_type`."""
