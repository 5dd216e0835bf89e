"""Briefs 000, 001 and 004 through Envoy and TorchServe, on tiny checkpoints built for the test.

Every answer is compared with transformers' own pipeline on the same folder.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from load_tests.kit.stack import Launcher
from tests.helpers import post
from tests.unit.test_text_models import same_answer


@pytest.mark.parametrize(
    "body",
    [
        {"text": "Hello I'm a [MASK] model."},
        {"text": "The [MASK] sat on the [MASK].", "top_k": 3},
        {"text": ["paris is the [MASK] of france", "[MASK] love this movie"], "top_k": 1},
    ],
)
def test_inference_equals_the_fill_mask_pipeline(
    stack: Launcher, pipelines: dict[str, Any], body: Any
) -> None:
    response = post(stack, "/inference", body)
    assert response.status_code == 200, response.text
    texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
    expected = [pipelines["fill_mask"](text, top_k=body.get("top_k", 5)) for text in texts]
    same_answer(response.json(), expected if isinstance(body["text"], list) else expected[0])


def test_the_text_models_serve_the_compiled_backend(stack: Launcher) -> None:
    """The default backend was exported at build, passed its parity gate and is what serves:
    the pipeline-equality tests of this file run through it."""
    store = stack.workdir / "model_store"
    for name in ("fill_mask", "camembert", "sentiment"):
        record = json.loads((store / ".builds" / f"{name}.json").read_text(encoding="utf-8"))
        assert record["runtime"] == "openvino", (name, record)
        parity = json.loads((store / name / "compiled" / "parity.json").read_text(encoding="utf-8"))
        assert parity["passed"] and parity["score_max_abs_diff"] <= 1e-5, parity
    worker_log = stack.runtime_dir / "torchserve" / "logs" / "model_log.log"
    loaded = [line for line in worker_log.read_text(encoding="utf-8").splitlines() if "forward pass:" in line]
    for name in ("fill_mask", "camembert", "sentiment"):
        assert any(f"-{name}_1.0-" in line and "openvino on cpu" in line for line in loaded), loaded


def test_camembert_on_the_generic_path(stack: Launcher, pipelines: dict[str, Any]) -> None:
    for text in ("Le camembert est <mask>.", "Le camembert est [MASK]."):
        response = post(stack, "/predictions/camembert", {"text": text})
        assert response.status_code == 200, response.text
        same_answer(response.json(), pipelines["camembert"](text.replace("[MASK]", "<mask>")))


def test_predict_equals_the_sentiment_pipeline(stack: Launcher, pipelines: dict[str, Any]) -> None:
    texts = ["I love this movie, it is great.", "This film was terrible and boring."]
    single = post(stack, "/predict", {"text": texts[0]})
    assert single.status_code == 200, single.text
    same_answer(single.json(), pipelines["sentiment"](texts[0])[0])
    same_answer(
        post(stack, "/predict", {"text": texts}).json(), [pipelines["sentiment"](t)[0] for t in texts]
    )


@pytest.mark.parametrize("model_name", ["camembert-base", "camembert", "camembert/camembert-base"])
def test_brief_004_body_picks_the_model_by_name(
    stack: Launcher, pipelines: dict[str, Any], model_name: str
) -> None:
    body = {"model_name": model_name, "task": "fill-mask", "text": "Paris est la <mask> de la France."}
    response = post(stack, "/predict", body)
    assert response.status_code == 200, response.text
    same_answer(response.json(), pipelines["camembert"](body["text"]))


def test_an_unknown_model_name_is_400_listing_the_served_models(stack: Launcher) -> None:
    response = post(stack, "/predict", {"model_name": "gpt-17", "text": "hello"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert all(name in error for name in ("fill_mask", "camembert", "sentiment", "crystal_sklearn"))


def test_a_task_that_is_not_the_models_is_400(stack: Launcher) -> None:
    response = post(
        stack, "/predict", {"model_name": "camembert-base", "task": "translation", "text": "x <mask>"}
    )
    assert response.status_code == 400 and "fill-mask" in response.json()["error"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/inference", {"text": "no mask"}),
        ("/inference", {"text": ""}),
        ("/inference", {"text": 12}),
        ("/inference", {"text": ["ok [MASK]", None]}),
        ("/inference", {"text": "a [MASK]", "top_k": 0}),
        ("/inference", {"text": "a [MASK]", "top_k": 99}),
        ("/inference", {"text": "[MASK] " + "word " * 300}),
        ("/predict", {"text": ""}),
        ("/predict", {"text": ["fine", 3]}),
        ("/predict", {"text": "word " * 300}),
        ("/predict", {"text": "fine", "model_name": "sentiment", "top_k": 2}),
    ],
)
def test_bad_text_requests_are_422_json(stack: Launcher, path: str, body: Any) -> None:
    response = post(stack, path, body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] and response.json()["code"] == 422


def test_a_text_over_the_limit_names_the_limit(stack: Launcher) -> None:
    response = post(stack, "/inference", {"text": "[MASK] " + "word " * 300})
    assert "accepts at most 64" in response.json()["error"]


def test_streaming_answers_line_by_line_as_items_are_computed(
    stack: Launcher, pipelines: dict[str, Any]
) -> None:
    sentence = "the cat number {} sat on the [MASK] while the weather was cold and grey today in paris"
    texts = [sentence.format(i) for i in range(63)] + ["[MASK] " + "word " * 300]
    started = time.monotonic()
    arrivals: list[float] = []
    lines: list[dict[str, Any]] = []
    with requests.post(
        f"{stack.url}/inference", json={"text": texts, "stream": True, "top_k": 2}, stream=True, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        for line in response.iter_lines(chunk_size=1):
            if line:
                arrivals.append(time.monotonic() - started)
                lines.append(json.loads(line))
    assert [line["index"] for line in lines] == list(range(len(texts)))
    for line, text in zip(lines[:3], texts, strict=False):
        same_answer(line["result"], pipelines["fill_mask"](text, top_k=2))
    assert "at most 64" in lines[-1]["error"]
    # Not buffered: the first line came long before the last item was computed.
    assert arrivals[0] < arrivals[-1] / 2, arrivals


def test_concurrent_good_and_bad_text_requests_keep_their_answers(
    stack: Launcher, pipelines: dict[str, Any]
) -> None:
    good = {"text": "Hello I'm a [MASK] model.", "top_k": 3}
    expected = pipelines["fill_mask"](good["text"], top_k=3)
    jobs = [good if i % 2 == 0 else {"text": "no mask at all"} for i in range(40)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda body: post(stack, "/inference", body), jobs))
    for body, response in zip(jobs, responses, strict=True):
        if body is good:
            assert response.status_code == 200, response.text
            same_answer(response.json(), expected)
        else:
            assert response.status_code == 422
