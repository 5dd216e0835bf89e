"""The predictor contract: what a kind says nothing about gets its default, and the batch logic
uses each ability through the contract."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from modelserver.errors import InvalidInput, SpecValidationFailed
from modelserver.kinds.contract import Predictor
from modelserver.kinds.crystal.worker import CrystalPredictor
from modelserver.kinds.text.worker import TextPredictor
from modelserver.kinds.topics.worker import TopicsPredictor
from modelserver.payload import MAX_ANSWER_BYTES
from modelserver.serving.batch import NDJSON, BatchAnswerer


class Upper(Predictor[str]):
    """The least a kind writes: parse and predict."""

    def parse(self, payload: Any) -> str:
        """A body's `text`."""
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
            raise InvalidInput("text must be a string")
        return str(payload["text"])

    def predict(self, requests: Sequence[str]) -> list[Any]:
        """Each text in capitals."""
        return [text.upper() for text in requests]


class Shouting(Upper):
    """A kind that streams: a text of many words, one line per word."""

    invalid_input = SpecValidationFailed

    def wants_stream(self, request: str) -> bool:
        """Texts of several words stream."""
        return " " in request

    def stream_parts(self, request: str, size: int | None = None) -> list[str]:
        """Words in groups of `size` (1 by default)."""
        words = request.split()
        step = size or 1
        return [" ".join(words[i : i + step]) for i in range(0, len(words), step)]

    def predict(self, requests: Sequence[str]) -> list[Any]:
        """A list of capitalised words per request."""
        return [text.upper().split() for text in requests]


def test_a_kind_that_says_nothing_gets_the_defaults() -> None:
    predictor = Upper()
    assert predictor.invalid_input is InvalidInput and predictor.max_answer_bytes == MAX_ANSWER_BYTES
    assert predictor.wants_stream("a b") is False
    assert predictor.stream_parts("a b") == ["a b"]
    [bad, good] = BatchAnswerer(predictor, "upper").answer([b"{not json", b'{"text": "hi"}'])
    assert bad.status == 422 and good.status == 200 and good.body == "HI"


def test_parse_and_predict_are_required() -> None:
    class ParseOnly(Predictor[str]):  # pylint: disable=abstract-method
        """Forgot predict."""

        def parse(self, payload: Any) -> str:
            """Anything."""
            return str(payload)

    with pytest.raises(TypeError, match="predict"):
        ParseOnly()  # pylint: disable=abstract-class-instantiated


def test_the_batch_logic_uses_each_declared_ability() -> None:
    chunks: list[tuple[int, bytes]] = []
    outcomes = BatchAnswerer(Shouting(), "shouting").answer(
        [b"[", b'{"text": "one two three"}'], emit=lambda index, chunk: chunks.append((index, chunk))
    )
    assert outcomes[0].status == 405  # its own invalid-input class
    assert outcomes[1].content_type == NDJSON and [index for index, _ in chunks] == [1, 1]
    lines = [json.loads(line) for _, chunk in chunks for line in chunk.splitlines()]
    lines += [json.loads(line) for line in outcomes[1].body.splitlines()]
    assert [line["result"] for line in lines] == ["ONE", "TWO", "THREE"]


def test_every_kind_predictor_keeps_the_contract() -> None:
    for predictor in (CrystalPredictor, TopicsPredictor, TextPredictor):
        assert issubclass(predictor, Predictor)
    assert TopicsPredictor.invalid_input is SpecValidationFailed  # /prediction's spec: 405
    assert CrystalPredictor.invalid_input is InvalidInput
