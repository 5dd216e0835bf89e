"""What a user picking a modern Python serving library would write: LitServe with its dynamic
batching, one transformers pipeline per worker, the same route and answer as ours.

    PEER_MODEL=/path/to/bert PEER_TASK=fill-mask PEER_TORCH_THREADS=1 PEER_WORKERS=2 \
        PEER_MAX_BATCH=8 PEER_BATCH_TIMEOUT=0.01 python -m load_tests.peers.litserve_pipeline 8000

Runs in the benchmark's LitServe virtualenv (litserve pinned there; torch and transformers are
the project's). The pipeline is called once per batch LitServe forms, as its docs show.
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation as a
# type to build its FastAPI endpoint, and a string would not resolve there.
import os
import sys
from typing import Any

import litserve  # pylint: disable=import-error  # installed in the peer's own virtualenv
import torch
from pydantic import BaseModel
from transformers import pipeline

# task -> route; the answer is the pipeline's for one text (candidates; a label and its score)
ROUTES = {"fill-mask": "/inference", "text-classification": "/predict"}


class TextRequest(BaseModel):
    """The body of our /inference and /predict: one text."""

    text: str


class PipelineAPI(litserve.LitAPI):
    """POST {"text": ...}: the pipeline's answer for that text, batched by LitServe."""

    def __init__(self, task: str, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=ROUTES[task])
        self.task = task
        self.model: Any = None

    def setup(self, device: str) -> None:
        """Load the pipeline once per worker, with the worker's share of the cores."""
        torch.set_num_threads(int(os.environ.get("PEER_TORCH_THREADS", "1")))
        self.model = pipeline(self.task, model=os.environ["PEER_MODEL"], device=device)

    def decode_request(self, request: TextRequest, **_: Any) -> str:
        """The text: LitServe has validated the body against TextRequest."""
        return request.text

    def predict(self, x: Any, **_: Any) -> Any:
        """One text without batching, a list of texts with it: one pipeline call either way."""
        texts = [x] if isinstance(x, str) else list(x)
        with torch.inference_mode():
            outputs = self.model(texts, batch_size=len(texts))
        if self.task == "fill-mask" and len(texts) == 1:
            outputs = [outputs]  # the fill-mask pipeline unwraps a list of one
        return outputs[0] if isinstance(x, str) else outputs


def main() -> None:
    """Serve on the port given as the only argument, configured by the PEER_* variables."""
    api = PipelineAPI(
        os.environ["PEER_TASK"],
        int(os.environ.get("PEER_MAX_BATCH", "8")),
        float(os.environ.get("PEER_BATCH_TIMEOUT", "0.01")),
    )
    server = litserve.LitServer(
        api, accelerator="cpu", workers_per_device=int(os.environ.get("PEER_WORKERS", "2"))
    )
    server.run(host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
