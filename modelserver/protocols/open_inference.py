"""The Open Inference Protocol (KServe v2, Triton, MLServer) over REST, as JSON tensors.

The protocol only: request and answer parsing and the generic `TensorCodec`. Each kind declares
its own codec in its package (the tensors its model takes and gives, for `/v2/models/{name}`;
how an `infer` request becomes the kind's own request bodies, and how their answers become
output tensors). The worker's adapter uses the codec, so a v2 request is batched, validated and
answered by the very code of the model's own routes. Framework-free: the launcher serves the
metadata and readiness pages from the same codecs.

Triton's binary tensor extension is refused (a 400 saying to send JSON tensors).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelserver.errors import BadRequest, InvalidInput, ModelFailure
from modelserver.validation import quoted, validate_body

# The request header Envoy sets on the v2 `infer` route (and strips from every client request):
# the worker answers that request in the protocol's shape.
PROTOCOL_HEADER = "x-inference-protocol"
PROTOCOL = "open-inference-v2"
MODEL_VERSION = "1"
NUMBER_TYPES = (
    "FP32",
    "FP64",
    "FP16",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
)
# What each numeric datatype holds: the largest magnitude of a float type, the bounds of an
# integer type (whose elements must be whole numbers).
FLOAT_LIMITS = {"FP16": 65504.0, "FP32": 3.4028234663852886e38, "FP64": sys.float_info.max}
INTEGER_BITS = {
    "INT8": 8,
    "INT16": 16,
    "INT32": 32,
    "INT64": 64,
    "UINT8": 8,
    "UINT16": 16,
    "UINT32": 32,
    "UINT64": 64,
}
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
]  # fmt: skip
# Parameters a client may send that change nothing here: answers are always JSON tensors, and
# every request is answered in turn (no priorities; the route's timeout applies).
REQUEST_PREFERENCES = ("binary_data_output", "priority", "timeout")
OUTPUT_PREFERENCES = ("binary_data",)
BINARY_REFUSED = (
    "binary tensor data is not supported here: send JSON tensors (tritonclient: binary_data=False)"
)


class RequestInput(BaseModel):
    """One input tensor: its data flat in row-major order (or nested as its shape)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestOutput(BaseModel):
    """An output the client asks for."""

    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """`POST /v2/models/{name}/infer`."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's name, datatype and shape (-1: any size) as model metadata gives it."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        """As `/v2/models/{name}` lists it."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _flat(data: list[Any]) -> list[Any]:
    """Tensor data flattened (the protocol allows nested lists in the tensor's shape)."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def integer_bounds(datatype: str) -> tuple[int, int]:
    """The smallest and largest value of an integer datatype."""
    bits = INTEGER_BITS[datatype]
    return (0, 2**bits - 1) if datatype.startswith("U") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def out_of_range(value: float, datatype: str) -> str | None:
    """Why a finite number cannot be an element of `datatype`, or None when it can."""
    if datatype in FLOAT_LIMITS:
        limit = FLOAT_LIMITS[datatype]
        return None if abs(value) <= limit else f"{value:g} is outside {datatype}'s range (±{limit:g})"
    if datatype in INTEGER_BITS:
        if isinstance(value, float) and not value.is_integer():
            return f"{value:g} is not a whole number, as {datatype} elements must be"
        low, high = integer_bounds(datatype)
        return None if low <= value <= high else f"{value:g} is outside {datatype}'s range ({low} to {high})"
    return None


def nested_as_shape(data: list[Any], shape: Sequence[int]) -> bool:
    """Whether nested data follows the declared shape level by level (flat data always may)."""
    if not any(isinstance(item, list) for item in data):
        return True

    def follows(node: Any, dims: Sequence[int]) -> bool:
        if not dims:
            return not isinstance(node, list)
        return (
            isinstance(node, list)
            and len(node) == dims[0]
            and all(follows(child, dims[1:]) for child in node)
        )

    return follows(data, shape)


def tensor_values(tensor: RequestInput, expected: TensorSpec) -> list[Any]:
    """The tensor's values, flat, checked against its shape and the datatype the kind takes."""
    if tensor.parameters and tensor.parameters.get("binary_data_size") is not None:
        raise BadRequest(BINARY_REFUSED)
    wanted = NUMBER_TYPES if expected.datatype in NUMBER_TYPES else (expected.datatype,)
    if tensor.datatype not in wanted:
        raise InvalidInput(
            f"input {quoted(tensor.name)} is {tensor.datatype}; it must be {expected.datatype}"
        )
    if len(tensor.shape) != len(expected.shape):
        raise InvalidInput(
            f"input {quoted(tensor.name)} has shape {tensor.shape}; it must have {len(expected.shape)} "
            f"dimensions ({list(expected.shape)}, -1 for any size)"
        )
    for size, fixed in zip(tensor.shape, expected.shape, strict=True):
        if fixed >= 0 and size != fixed:
            raise InvalidInput(
                f"input {quoted(tensor.name)} has shape {tensor.shape}; it must be {list(expected.shape)}"
            )
    if not nested_as_shape(tensor.data, tensor.shape):
        raise InvalidInput(
            f"input {quoted(tensor.name)}: its nested data does not follow its shape {tensor.shape} "
            "(send the values flat, or nested exactly as the shape)"
        )
    values = _flat(tensor.data)
    if len(values) != math.prod(tensor.shape):
        raise InvalidInput(
            f"input {quoted(tensor.name)} has {len(values)} values for shape {tensor.shape} "
            f"({math.prod(tensor.shape)} expected)"
        )
    if expected.datatype == "BYTES" and not all(isinstance(value, str) for value in values):
        raise InvalidInput(f"input {quoted(tensor.name)}: every BYTES element must be a string")
    if expected.datatype in NUMBER_TYPES:
        if not all(map(_finite_number, values)):
            raise InvalidInput(f"input {quoted(tensor.name)}: every element must be a finite number")
        for value in values:
            if problem := out_of_range(value, tensor.datatype):
                raise InvalidInput(f"input {quoted(tensor.name)}: {problem}")
    return values


def _finite_number(value: Any) -> bool:
    """A JSON number a float holds (an integer of 310 digits is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def output_tensor(spec: TensorSpec, shape: Sequence[int], data: list[Any]) -> dict[str, Any]:
    """One output tensor, its data flat."""
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(shape), "data": data}


Bodies = Callable[[dict[str, list[Any]], dict[str, Any], Sequence[int]], list[dict[str, Any]]]
Outputs = Callable[[list[Any], Sequence[int]], dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class TensorCodec:
    """How one kind speaks the protocol: its tensors, the parameters it honours, and the
    mapping of an `infer` request to its own request bodies and back."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    bodies: Bodies  # (values by input name, parameters, first input's shape) -> own bodies
    answers: Outputs  # (answers to those bodies, first input's shape) -> output tensors by name
    parameters: tuple[str, ...] = ()
    max_items: int | None = None  # the most own bodies one request may become (None: the kind's own caps)
    platform: str = "modelserver"
    notes: dict[str, str] = field(default_factory=dict)

    def metadata(self, name: str) -> dict[str, Any]:
        """`GET /v2/models/{name}`."""
        return {
            "name": name,
            "versions": [MODEL_VERSION],
            "platform": self.platform,
            "inputs": [spec.metadata() for spec in self.inputs],
            "outputs": [spec.metadata() for spec in self.outputs],
        }

    def requested(self, request: InferRequest) -> list[str]:
        """The output names to answer with: those asked for (each a known one), or all. A wish
        for binary outputs is answered in JSON, which the protocol's clients read as well."""
        known = [spec.name for spec in self.outputs]
        if request.outputs is None:
            return known
        for output in request.outputs:
            if output.name not in known:
                raise InvalidInput(f"output {quoted(output.name)} is not one of this model's: {known}")
            unknown = sorted(set(output.parameters or {}) - set(OUTPUT_PREFERENCES))
            if unknown:
                raise InvalidInput(f"output parameter {quoted(unknown[0])} is not supported here")
        return [output.name for output in request.outputs]

    def to_bodies(self, request: InferRequest) -> list[dict[str, Any]]:
        """The kind's own request bodies for one `infer` request."""
        given = request.parameters or {}
        parameters = {key: value for key, value in given.items() if key not in REQUEST_PREFERENCES}
        unknown = sorted(set(parameters) - set(self.parameters))
        if unknown:
            honoured = f"; this model takes {list(self.parameters)}" if self.parameters else ""
            raise InvalidInput(f"parameter {quoted(unknown[0])} is not one this model honours{honoured}")
        by_name = {tensor.name: tensor for tensor in request.inputs}
        expected = [spec.name for spec in self.inputs]
        if sorted(by_name) != sorted(expected) or len(request.inputs) != len(expected):
            raise InvalidInput(
                f"inputs are {[tensor.name for tensor in request.inputs]}; this model takes {expected}"
            )
        values = {spec.name: tensor_values(by_name[spec.name], spec) for spec in self.inputs}
        first = values[self.inputs[0].name]
        if self.max_items is not None and len(first) > self.max_items:
            raise InvalidInput(f"at most {self.max_items} elements per request; {len(first)} were sent")
        return self.bodies(values, parameters, by_name[self.inputs[0].name].shape)

    def to_response(
        self, name: str, request: InferRequest, answers: list[Any], shape: Sequence[int]
    ) -> dict[str, Any]:
        """The `infer` response from the answers to the request's own bodies."""
        tensors = self.answers(answers, shape)
        response: dict[str, Any] = {"model_name": name, "model_version": MODEL_VERSION}
        if request.id is not None:
            response["id"] = request.id
        response["outputs"] = [tensors[output] for output in self.requested(request)]
        return response


def parse_infer_request(payload: Any) -> InferRequest:
    """Validate an `infer` body (a 422 naming the first problem)."""
    return validate_body(InferRequest, payload, "inputs")


def json_outputs(spec: TensorSpec) -> Outputs:
    """Answers whose items are nested JSON: each item of the one own body's answer as one BYTES
    element holding its JSON."""

    def outputs(answers: list[Any], _: Sequence[int]) -> dict[str, dict[str, Any]]:
        [per_item] = answers
        try:
            data = [json.dumps(answer, separators=(",", ":"), allow_nan=False) for answer in per_item]
        except ValueError:
            raise ModelFailure("the model produced an answer that is not valid JSON") from None
        return {spec.name: output_tensor(spec, [len(data)], data)}

    return outputs


# The protocol's answers, for the OpenAPI document.


class ResponseOutput(BaseModel):
    """One output tensor, its data flat in row-major order."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class InferResponse(BaseModel):
    """The answer to `infer`."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    """A tensor in model metadata (-1: any size)."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """`GET /v2/models/{name}`."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    """`GET /v2`."""

    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    """`GET /v2/health/live`."""

    live: bool


class ServerReadiness(BaseModel):
    """`GET /v2/health/ready` when ready."""

    ready: bool


class ModelReadiness(BaseModel):
    """`GET /v2/models/{name}/ready` when ready."""

    name: str
    ready: bool


def example_request(codec: TensorCodec, own_example: dict[str, Any]) -> dict[str, Any]:
    """An `infer` body for the API document, from the kind's own example request."""
    spec = codec.inputs[0]
    if spec.datatype == "BYTES":  # the example's one text, as a tensor of one element
        data: list[Any] = [own_example[spec.name]]
        shape = [1]
    else:  # the example's rows, flat
        rows = own_example[spec.name]
        data, shape = [value for row in rows for value in row], [len(rows), len(rows[0])]
    return {"inputs": [{"name": spec.name, "shape": shape, "datatype": spec.datatype, "data": data}]}
