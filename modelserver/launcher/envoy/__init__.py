"""Envoy in front of TorchServe: its config built as data, its routes, and its process."""
