"""The common approach to the crystal models: FastAPI and pydantic under uvicorn.

    PEER_MODEL=model.joblib PEER_LABELS=labels.json \
        uvicorn --workers 2 --factory load_tests.peers.fastapi_crystal:create_app --port 8001

Same request and answer as our /sklearn, same joblib file; validation is pydantic's (a list
of float rows). The model call is `predict_proba`, as in our runtime.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel
from threadpoolctl import threadpool_limits


class CrystalRequest(BaseModel):
    """The brief's body: rows of four measurements."""

    crystalData: list[list[float]]


def create_app() -> FastAPI:
    """Load the estimator and labels once per worker; answer POST /sklearn."""
    threadpool_limits(1)
    model = joblib.load(os.environ["PEER_MODEL"])
    labels: list[str] = json.loads(Path(os.environ["PEER_LABELS"]).read_text(encoding="utf-8"))
    app = FastAPI()

    @app.post("/sklearn")
    async def sklearn(body: CrystalRequest) -> dict[str, Any]:
        probabilities = model.predict_proba(np.asarray(body.crystalData, dtype=np.float64))
        return {
            "prediction": [labels[i] for i in probabilities.argmax(axis=1)],
            "scores": [dict(zip(labels, map(float, row), strict=True)) for row in probabilities],
        }

    return app
