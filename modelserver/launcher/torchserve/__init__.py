"""TorchServe behind Envoy: its runtime config, its keys, its management API and its process."""
