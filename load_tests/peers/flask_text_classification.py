"""The naive approach to sentiment: Flask calling a transformers pipeline, under gunicorn.

    PEER_MODEL=/path/to/distilbert-sst2 PEER_TORCH_THREADS=1 \
        gunicorn -w 2 -b 127.0.0.1:8000 'load_tests.peers.flask_text_classification:create_app()'

Each gunicorn worker loads its own pipeline and answers one request at a time.
"""

from __future__ import annotations

from flask import Flask

from load_tests.peers.flask_pipeline import pipeline_app


def create_app() -> Flask:
    """POST /predict: the text-classification pipeline's top label and score."""
    return pipeline_app("text-classification", "/predict", lambda classify, body: classify(body["text"])[0])
