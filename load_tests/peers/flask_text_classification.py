"""The briefs' approach to sentiment (brief 001): Flask calling a transformers pipeline, under gunicorn.

    PEER_MODEL=/path/to/distilbert-sst2 PEER_TORCH_THREADS=1 \
        gunicorn -w 2 -b 127.0.0.1:8000 'load_tests.peers.flask_text_classification:create_app()'

Each gunicorn worker loads its own pipeline and answers one request at a time, with one torch
thread per worker (the tuned version: two workers do not fight over the two cores).
"""

from __future__ import annotations

import os

import torch
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from transformers import pipeline


def create_app() -> Flask:
    """Load the pipeline once per worker and route POST /predict to it."""
    threads = os.environ.get("PEER_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    classify = pipeline("text-classification", model=os.environ["PEER_MODEL"], device="cpu")
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> ResponseReturnValue:
        body = request.get_json(force=True)
        with torch.inference_mode():
            return jsonify(classify(body["text"])[0])

    return app
