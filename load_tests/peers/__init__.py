"""Naive servers the benchmark measures ours against, on the same weights: what a user would
write without a model server (the briefs' Flask app, a FastAPI app)."""
