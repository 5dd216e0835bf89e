"""Generators of the files the repository commits (the Kubernetes ConfigMap, the API samples,
the catalogue's Hub revisions) and the supply-chain checks, run through `python -m modelserver`;
a test fails when a committed file is stale."""
