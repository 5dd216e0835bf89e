"""What both Flask peers are: one transformers pipeline per gunicorn worker behind one route.

Without PEER_TORCH_THREADS torch keeps its default (one thread per core in every worker, so
two workers fight over the cores); with 1 it is the fair, tuned version of the same app.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from transformers import pipeline


def pipeline_app(task: str, route: str, answer: Callable[[Any, dict[str, Any]], Any]) -> Flask:
    """Load the `task` pipeline on PEER_MODEL once per worker; POST `route` answers
    `answer(pipeline, body)` as JSON."""
    threads = os.environ.get("PEER_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    model = pipeline(task, model=os.environ["PEER_MODEL"], device="cpu")
    app = Flask(__name__)

    @app.post(route)
    def predict() -> ResponseReturnValue:
        body = request.get_json(force=True)
        with torch.inference_mode():
            return jsonify(answer(model, body))

    return app
