"""Seldon MLServer serving the crystal joblib file with its scikit-learn runtime, through the
Open Inference Protocol, configured as its docs show (a settings.json and a model-settings.json).

    PEER_MODEL=model.joblib PEER_FOLDER=/tmp/mlserver PEER_WORKERS=2 PEER_MAX_BATCH=1 \
        python -m load_tests.peers.mlserver_crystal 8080 8081 8082

The three ports are HTTP, gRPC and metrics. PEER_WORKERS is MLServer's `parallel_workers` (0:
inference in the server's own process); PEER_MAX_BATCH above 1 turns on its adaptive batching,
waiting up to PEER_BATCH_TIME seconds. Runs in the benchmark's MLServer virtualenv, with the
standard library only until it hands over to `mlserver start`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

MODEL_NAME = "crystal_sklearn"  # the same name, so the same v2 path as ours


def write_settings(folder: Path, ports: list[int]) -> None:
    """The server's and the model's settings files, from the PEER_* variables."""
    http, grpc, metrics = ports
    server = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "parallel_workers": int(os.environ.get("PEER_WORKERS", "2")),
        "metrics_dir": str(folder / "metrics"),  # else `.metrics` in the working directory
    }
    model = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": os.environ["PEER_MODEL"]},
        "max_batch_size": int(os.environ.get("PEER_MAX_BATCH", "1")),
        "max_batch_time": float(os.environ.get("PEER_BATCH_TIME", "0.001")),
    }
    (folder / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    (folder / "metrics").mkdir(exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(server, indent=2), encoding="utf-8")
    (folder / MODEL_NAME / "model-settings.json").write_text(json.dumps(model, indent=2), encoding="utf-8")


def main() -> None:
    """Write the settings, then become `mlserver start` (so signals reach it directly)."""
    folder = Path(os.environ["PEER_FOLDER"])
    write_settings(folder, [int(port) for port in sys.argv[1:4]])
    mlserver = str(Path(sys.executable).parent / "mlserver")
    os.execv(mlserver, [mlserver, "start", str(folder)])


if __name__ == "__main__":
    main()
