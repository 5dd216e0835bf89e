"""The servers the benchmark measures ours against, on the same weights: what a user would write
without a model server (the briefs' Flask app, a FastAPI app), and the serving libraries a user
would pick instead (MLServer, LitServe), each run from a virtualenv of its own."""
