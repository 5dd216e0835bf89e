"""A TorchServe batch in which some requests speak the Open Inference Protocol.

Each v2 `infer` request becomes its kind's own request bodies (the codec's mapping); those join
the batch's other bodies, so one model call answers them all, and their answers are turned back
into one v2 response per request. A v2 request whose body fails fails alone, with the status
its own route would give (a 422 for bad data), never its neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from modelserver.errors import InvalidInput, ModelFailure, ServingError
from modelserver.payload import decode_json_body
from modelserver.protocols.open_inference import InferRequest, TensorCodec, parse_infer_request
from modelserver.serving.batch import BatchAnswerer, BatchTimes, Emit, Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Plan:
    """Where one v2 request's own bodies sit in the expanded batch."""

    request: InferRequest
    shape: list[int]
    start: int
    stop: int


def _plan(codec: TensorCodec, body: Any, start: int) -> tuple[_Plan, list[dict[str, Any]]]:
    request = parse_infer_request(decode_json_body(body))
    codec.requested(request)  # refuses unknown or binary outputs before any model work
    bodies = codec.to_bodies(request)
    if not bodies:
        raise InvalidInput("the input tensors hold no data")
    shape = next(t.shape for t in request.inputs if t.name == codec.inputs[0].name)
    return _Plan(request, shape, start, start + len(bodies)), bodies


@dataclass
class _Expanded:
    """The batch as the model's own bodies: where each came from, and each v2 request's plan
    (or its outcome already, when its body failed)."""

    bodies: list[Any]
    owner_of: list[int]  # the batch index each expanded body came from
    own_at: dict[int, int]  # batch index of an own-shape body -> its place in `bodies`
    plans: dict[int, _Plan | Outcome]


def _expand(
    codec: TensorCodec | None, model_name: str, bodies: Sequence[Any], open_inference: Sequence[bool]
) -> _Expanded:
    expanded = _Expanded([], [], {}, {})
    for index, (body, is_v2) in enumerate(zip(bodies, open_inference, strict=True)):
        if not is_v2:
            expanded.own_at[index] = len(expanded.bodies)
            expanded.bodies.append(body)
            expanded.owner_of.append(index)
            continue
        if codec is None:
            failure = InvalidInput(f"{model_name} does not speak the Open Inference Protocol")
            expanded.plans[index] = Outcome.of_error(failure)
            continue
        try:
            plan, own = _plan(codec, body, len(expanded.bodies))
        except ServingError as error:
            expanded.plans[index] = Outcome.of_error(error)
            continue
        except Exception as error:  # pylint: disable=broad-exception-caught
            # A bug in the mapping must cost this request only, never its whole batch.
            log.error("%s could not map a v2 request: %s", model_name, type(error).__name__)
            expanded.plans[index] = Outcome.of_error(ModelFailure("the request could not be mapped"))
            continue
        expanded.plans[index] = plan
        expanded.bodies.extend(own)
        expanded.owner_of.extend([index] * len(own))
    return expanded


def answer_batch(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    answerer: BatchAnswerer[Any],
    codec: TensorCodec | None,
    model_name: str,
    bodies: Sequence[Any],
    open_inference: Sequence[bool],
    emit: Emit,
    times: BatchTimes,
) -> list[Outcome]:
    """One outcome per body: the own-shape ones as `answerer` gives them, the v2 ones
    (`open_inference[i]`) as v2 responses."""
    expanded = _expand(codec, model_name, bodies, open_inference)
    # Only own-shape bodies can ask to stream: their chunks go out under their batch index.
    answers = answerer.answer(expanded.bodies, lambda at, chunk: emit(expanded.owner_of[at], chunk), times)
    outcomes: list[Outcome] = []
    for index in range(len(bodies)):
        found = expanded.plans.get(index)
        if found is None:
            outcomes.append(answers[expanded.own_at[index]])
        elif isinstance(found, Outcome):
            outcomes.append(found)
        else:
            assert codec is not None
            outcomes.append(_response(codec, model_name, found, answers[found.start : found.stop]))
    return outcomes


def _response(codec: TensorCodec, model_name: str, plan: _Plan, answers: list[Outcome]) -> Outcome:
    """The v2 response, or the first failure among the request's own answers; a failure to
    map the answers is this request's 500."""
    for answer in answers:
        if answer.status != HTTPStatus.OK:
            # The protocol's invalid input is a 422 (/prediction's own spec says 405 for it).
            status = (
                HTTPStatus.UNPROCESSABLE_ENTITY
                if answer.status == HTTPStatus.METHOD_NOT_ALLOWED
                else answer.status
            )
            body = {**answer.body, "code": int(status)} if isinstance(answer.body, dict) else answer.body
            return Outcome(int(status), body)
    try:
        return Outcome(
            200, codec.to_response(model_name, plan.request, [a.body for a in answers], plan.shape)
        )
    except ServingError as error:
        return Outcome.of_error(error)
    except Exception as error:  # pylint: disable=broad-exception-caught
        log.error("%s could not map answers to v2 outputs: %s", model_name, type(error).__name__)
        return Outcome.of_error(ModelFailure("the answers could not be mapped to output tensors"))
