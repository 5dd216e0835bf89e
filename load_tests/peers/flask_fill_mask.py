"""The briefs' approach to fill-mask: a Flask app calling a transformers pipeline, under gunicorn.

    PEER_MODEL=/path/to/bert PEER_TORCH_THREADS=1 \
        gunicorn -w 2 -b 127.0.0.1:8000 'load_tests.peers.flask_fill_mask:create_app()'

Each gunicorn worker loads its own pipeline and answers one request at a time.
"""

from __future__ import annotations

from flask import Flask

from load_tests.peers.flask_pipeline import pipeline_app


def create_app() -> Flask:
    """POST /inference: the fill-mask pipeline's candidates."""
    return pipeline_app(
        "fill-mask", "/inference", lambda fill, body: fill(body["text"], top_k=int(body.get("top_k", 5)))
    )
