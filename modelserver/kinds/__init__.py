"""Model kinds: each module turns a model directory into a runtime that parses and predicts."""
