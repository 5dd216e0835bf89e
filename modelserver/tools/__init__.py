"""Generators of the files the repository commits (the Kubernetes ConfigMap, the API samples),
run through `python -m modelserver`; a test fails when a committed file is stale."""
