"""The briefs' approach to fill-mask: a Flask app calling a transformers pipeline, under gunicorn.

    PEER_MODEL=/path/to/bert PEER_TORCH_THREADS=1 \
        gunicorn -w 2 -b 127.0.0.1:8000 'load_tests.peers.flask_fill_mask:create_app()'

Each gunicorn worker loads its own pipeline and answers one request at a time. Without
PEER_TORCH_THREADS torch keeps its default (one thread per core in every worker, so the two
workers fight over the cores); with 1 it is the fair, tuned version of the same app.
"""

from __future__ import annotations

import os

import torch
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from transformers import pipeline


def create_app() -> Flask:
    """Load the pipeline once per worker and route POST /inference to it."""
    threads = os.environ.get("PEER_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    fill_mask = pipeline("fill-mask", model=os.environ["PEER_MODEL"], device="cpu")
    app = Flask(__name__)

    @app.post("/inference")
    def inference() -> ResponseReturnValue:
        body = request.get_json(force=True)
        with torch.inference_mode():
            return jsonify(fill_mask(body["text"], top_k=int(body.get("top_k", 5))))

    return app
