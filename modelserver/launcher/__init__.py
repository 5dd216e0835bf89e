"""One launcher for laptops, CI and containers: build, start TorchServe, wait, start Envoy."""
