"""Test helpers: answers compared up to float32 rounding, a fake TorchServe context, `make scale`
on a running stack, a POST to it and the check of a JSON error. The stack launcher, free ports
and the catalogue writer are the load-test kit's (`load_tests.kit.stack`), which the load tools
share."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from load_tests.kit.stack import Launcher, write_catalogue
from modelserver.catalogue import Catalogue
from modelserver.errors import ErrorType
from modelserver.kinds import ModelFiles, SettingsT
from modelserver.project import PROJECT_ROOT
from modelserver.serving.headers import VERSION_HEADER
from modelserver.validation import parse_settings

SEED_CRYSTAL = PROJECT_ROOT.parent / "shared" / "seed_data" / "crystal"

# How far float32 rounding may move a score between two batchings (see `answers_close`).
# float32's epsilon is 1.19e-7 (~7.2 significant digits), and a GEMM summing its K terms in
# another order differs by a few ulps -- of the logits. Softmax turns a logit error dz into a
# *relative* error of about dz in every probability (dp_i / p_i = dz_i - sum_j p_j dz_j), and
# the crystal MLP's logits reach |z| ~ 15, where an ulp is 9.5e-7: the same rows alone and
# batched differ by up to 1.2e-6 relative on an AVX2 CPU, and by up to 3.8e-6 under random
# reorderings of every sum. 1e-5 keeps a margin of 2.5 over that, far below a real change.
ANSWER_REL_TOL = 1e-5
# For probabilities near zero (1e-13 on the brief's rows): a large relative error there is
# still no change of the answer.
ANSWER_ABS_TOL = 1e-9


def answers_close(
    actual: Any, expected: Any, rel_tol: float = ANSWER_REL_TOL, abs_tol: float = ANSWER_ABS_TOL
) -> bool:
    """Whether two model answers (JSON values) are the same answer: identical structure, keys,
    strings, ints, bools and None; floats within `rel_tol` (or `abs_tol` near zero). Never
    compare scores exactly when the two sides may come from different batches (alone or
    batched, TorchServe's dynamic batches, a reference computed apart, another row of one
    batch, another CPU's kernels): each sums in its own order and rounds its own way."""
    if isinstance(expected, float):
        return isinstance(actual, float) and math.isclose(actual, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(expected, Mapping):
        return (
            isinstance(actual, Mapping)
            and actual.keys() == expected.keys()
            and all(answers_close(actual[key], value, rel_tol, abs_tol) for key, value in expected.items())
        )
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(actual, type(expected))
            and len(actual) == len(expected)
            and all(answers_close(a, e, rel_tol, abs_tol) for a, e in zip(actual, expected, strict=True))
        )
    return type(actual) is type(expected) and actual == expected


def model_files(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    settings_model: type[SettingsT],
    model_dir: Path,
    settings: Mapping[str, Any] | None = None,
    model_file: str = "",
    names: tuple[str, ...] = (),
) -> ModelFiles[SettingsT]:
    """An unpacked archive's files as the adapter hands them to a kind's loader: the `handler:`
    settings parsed once, by the kind's settings model."""
    return ModelFiles(model_dir, parse_settings(settings_model, dict(settings or {})), model_file, names)


@dataclass
class FakeContext:
    """The parts of TorchServe's `Context` a handler touches, recording what it sets."""

    model_dir: Path
    kind: str  # the model kind, as the archive's model-config.yaml names it
    handler_config: dict[str, Any]
    serialized_file: str = ""
    model_name: str = "test_model"
    statuses: dict[int, tuple[int, str]] = field(default_factory=dict)
    content_types: dict[int, str] = field(default_factory=dict)
    headers: dict[int, dict[str, str]] = field(default_factory=dict)
    # Request headers per request of the batch, lower-case names (as Envoy sends them).
    request_headers: dict[int, dict[str, str]] = field(default_factory=dict)
    gpu_id: int | str | None = None  # TorchServe's for a GPU worker; None on a CPU-only server

    @property
    def system_properties(self) -> dict[str, Any]:
        """As TorchServe fills them for a worker."""
        return {"model_dir": str(self.model_dir), "gpu_id": self.gpu_id, "batch_size": 8}

    @property
    def model_yaml_config(self) -> dict[str, Any]:
        """The archive's model-config.yaml."""
        return {"minWorkers": 1, "kind": self.kind, "handler": self.handler_config}

    @property
    def manifest(self) -> dict[str, Any]:
        """MAR-INF/MANIFEST.json."""
        return {"model": {"modelName": self.model_name, "serializedFile": self.serialized_file}}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Record a per-request status."""
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        """Record a per-request content type."""
        self.content_types[idx] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        """Record a per-request response header."""
        self.headers.setdefault(idx, {})[key] = value

    def get_request_header(self, idx: int, key: str) -> str | None:
        """A request header of request `idx`, as TorchServe's Context gives it."""
        return self.request_headers.get(idx, {}).get(key)

    def status_of(self, idx: int) -> int:
        """The status TorchServe would send for request `idx`."""
        return self.statuses.get(idx, (200, ""))[0]


def crystal_handler(model_dir: Path, framework: str = "sklearn") -> tuple[Any, FakeContext]:
    """An initialised handler of a crystal model and the context TorchServe would pass it."""
    from handlers.model_handler import ModelHandler  # pylint: disable=import-outside-toplevel

    context = FakeContext(
        model_dir,
        "crystal",
        {"framework": framework, "labels_file": "crystal_labels.json"},
        serialized_file=f"{framework}.model",
        model_name=f"crystal_{framework}",
    )
    handler = ModelHandler()
    handler.initialize(context)
    return handler, context


def access_log(stack: Launcher) -> list[dict[str, Any]]:
    """Every line of Envoy's access log and its rotated files, oldest first, as JSON."""
    folder = stack.runtime_dir / "envoy"

    def age(path: Path) -> int:
        return 0 if path.suffix == ".log" else -int(path.suffix[1:])

    files = sorted(folder.glob("access.log*"), key=age)
    return [json.loads(line) for path in files for line in path.read_text(encoding="utf-8").splitlines()]


def logged_requests(stack: Launcher, path: str, since: int, count: int = 1) -> list[dict[str, Any]]:
    """The access-log lines for `path` after the first `since` lines, once `count` are there
    (Envoy flushes its access log every second)."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [line for line in access_log(stack)[since:] if line["path"] == path]
        if len(found) >= count:
            break
        time.sleep(0.2)
    return found


def run_make(stack: Launcher, target: str, timeout_s: float, **variables: object) -> dict[str, Any]:
    """`make <target>`, as a user runs it, against this stack's runtime folder: its JSON answer."""
    assignments = [f"{name}={value}" for name, value in variables.items()]
    done = subprocess.run(
        ["make", "-s", target, *assignments, f"RUN_DIR={stack.runtime_dir}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout[done.stdout.index("{") :]))


def make_scale(stack: Launcher, model: str, workers: int) -> dict[str, object]:
    """`make scale MODEL=... WORKERS=...` against this stack."""
    return run_make(stack, "scale", 300, MODEL=model, WORKERS=workers)


def post(
    stack: Launcher, path: str, body: Any, headers: Mapping[str, str] | None = None, timeout: float = 60
) -> requests.Response:
    """POST to the public port: a JSON value encoded, raw bytes or text as they are, with a JSON
    content type unless `headers` say otherwise."""
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    sent = {"Content-Type": "application/json", **(headers or {})}
    return requests.post(f"{stack.url}{path}", data=data, headers=sent, timeout=timeout)


def check_json_error(
    response: requests.Response, status: int, error_type: ErrorType | None = None
) -> dict[str, Any]:
    """Every error, whoever makes it (handler, TorchServe, Envoy), is a JSON object with an
    `error` sentence, a documented `type` (this one, when given) and its `code`; returns the body."""
    assert response.status_code == status, (status, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip(), body
    assert body.get("code") == status, body
    assert body.get("type") in set(ErrorType), body
    if error_type is not None:
        assert body["type"] == error_type, body
    return body


def unpinned(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The routes a request without a version pin (`x-model-version`) may take."""
    return [
        route
        for route in routes
        if not any(header.get("name") == VERSION_HEADER for header in route["match"].get("headers", []))
    ]


# The candidate the traffic tests give crystal_sklearn: version 2, trained by the same recipe.
CANDIDATE_VERSION = "2"


def candidate_catalogue(
    folder: Path, traffic: Mapping[str, Any] | None = None, **candidate: Any
) -> Catalogue:
    """The project's catalogue with a candidate on crystal_sklearn (`candidate` fields override
    the version and source) and its `traffic` policy, written in `folder` and loaded."""
    spec = {
        "version": CANDIDATE_VERSION,
        "source": {"env": "CRYSTAL_SKLEARN_CANDIDATE", "recipe": "crystal_sklearn_iris"},
        **candidate,
    }
    path = write_catalogue(
        folder / "models.yaml",
        candidate={"crystal_sklearn": spec},
        traffic={"crystal_sklearn": dict(traffic or {})},
    )
    return Catalogue.load(path)
