"""What the Hugging Face text kinds share at serving time: loading, validation, length limits,
batching of texts. Their settings and request schemas are in this package's top level (no torch)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel

from modelserver.backends import Placement, place
from modelserver.backends.forward import Forward
from modelserver.errors import BadRequest, ConfigError, InvalidInput
from modelserver.kinds import MODEL_SUBDIR, ModelFiles
from modelserver.kinds.contract import Predictor
from modelserver.kinds.text import (
    REQUEST_CHARS_PER_TOKEN,
    TEXT_CHARS_PER_TOKEN,
    HubRequest,
    TextModelSettings,
    TextRequest,
)
from modelserver.validation import quoted, validate_body

log = logging.getLogger(__name__)

# RoBERTa-style models number positions from padding_idx + 1: two positions are never usable.
POSITION_OFFSET = {"roberta": 2, "camembert": 2, "xlm-roberta": 2}


def validate_request(
    model: type[BaseModel], payload: Any, names: Sequence[str], tasks: Sequence[str], max_texts: int
) -> Any:
    """Validate one body against a request model, this model's names and tasks."""
    request: Any = validate_body(model, payload, "text")
    if request.model_name is not None and names and request.model_name not in names:
        raise BadRequest(
            f"model_name {quoted(request.model_name)} is not this model; it answers to {list(names)}"
        )
    if request.task is not None and request.task not in tasks:
        raise BadRequest(f"task {quoted(request.task)} is not served here; this model does {list(tasks)}")
    if len(request.texts) > max_texts:
        raise InvalidInput(f"at most {max_texts} texts per request")
    if request.stream and isinstance(request.text, str):
        raise InvalidInput("'stream' needs 'text' to be a list of texts")
    return request


def _from_folder(files: ModelFiles[Any], loader: Callable[[Any], Any]) -> Any:
    """`loader(folder)` on the archive's model/ folder; a bad folder is a load-time ConfigError."""
    folder = files.model_dir / MODEL_SUBDIR
    try:
        return loader(folder)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"cannot load the model in {folder.name}/: {error}") from None


def load_tokenizer_and_config(files: ModelFiles[TextModelSettings]) -> tuple[Any, Any]:
    """Tokenizer and model config from the archive's model/ folder (from_pretrained format):
    all a worker needs of transformers when a compiled graph runs the model."""
    from transformers import AutoConfig, AutoTokenizer  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(files.settings.threads)
    return _from_folder(
        files, lambda folder: (AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder))
    )


def load_model(files: ModelFiles[TextModelSettings], auto_class: Any) -> Any:
    """The PyTorch model itself, loaded only when PyTorch runs it (eager, or on a GPU)."""
    return _from_folder(files, lambda folder: auto_class.from_pretrained(folder).eval())


def text_placement(files: ModelFiles[TextModelSettings]) -> Placement:
    """The backend and device this worker's forward pass gets."""
    return place(files.settings.backend, files.gpu_id, torch.cuda.is_available())


def max_tokens(tokenizer: Any, config: Any) -> int:
    """The longest input, in tokens, this model accepts."""
    positions = int(getattr(config, "max_position_embeddings", 512)) - POSITION_OFFSET.get(
        config.model_type, 0
    )
    declared = int(getattr(tokenizer, "model_max_length", positions) or positions)
    return min(positions, declared)


def split_texts(request: Any, size: int) -> list[Any]:
    """A list-of-texts request as sub-requests of at most `size` texts (for streaming)."""
    texts = request.texts
    return [
        request.model_copy(update={"text": texts[start : start + size], "stream": False})
        for start in range(0, len(texts), size)
    ]


def flatten(requests: Sequence[TextRequest]) -> tuple[list[str], list[int]]:
    """Every text of a batch, and the index of the request each came from."""
    texts: list[str] = []
    owners: list[int] = []
    for index, request in enumerate(requests):
        texts.extend(request.texts)
        owners.extend([index] * len(request.texts))
    return texts, owners


def char_errors(
    owners: Sequence[int], texts: Sequence[str], text_cap: int, request_cap: int
) -> dict[int, InvalidInput]:
    """A 422 for each request holding a text of more characters than one text may have, or
    more characters in all than one request may: found before any tokenizer work."""
    errors: dict[int, InvalidInput] = {}
    totals: dict[int, int] = {}
    for owner, text in zip(owners, texts, strict=True):
        totals[owner] = totals.get(owner, 0) + len(text)
        if len(text) > text_cap:
            errors.setdefault(
                owner,
                InvalidInput(f"a text is {len(text)} characters long; at most {text_cap} per text"),
            )
    for owner, total in totals.items():
        if total > request_cap and owner not in errors:
            errors[owner] = InvalidInput(
                f"the texts hold {total} characters in all; at most {request_cap} per request"
            )
    return errors


def length_errors(
    owners: Sequence[int], lengths: Sequence[int], limit: int, request_budget: int
) -> dict[int, InvalidInput]:
    """A 422 for each request holding a text longer than the model accepts, or more tokens in
    all than one request may cost."""
    errors: dict[int, InvalidInput] = {}
    totals: dict[int, int] = {}
    for owner, length in zip(owners, lengths, strict=True):
        totals[owner] = totals.get(owner, 0) + length
        if length > limit:
            errors.setdefault(
                owner, InvalidInput(f"a text is {length} tokens long; this model accepts at most {limit}")
            )
    for owner, total in totals.items():
        if total > request_budget and owner not in errors:
            errors[owner] = InvalidInput(
                f"the texts hold {total} tokens in all; at most {request_budget} per request"
            )
    return errors


def forward_groups(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of the texts, sorted by length and grouped so each padded group holds at most
    `budget` tokens (a text longer than the budget goes alone)."""
    groups: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        group = groups[-1] if groups else None
        if group is not None and lengths[index] * (len(group) + 1) <= budget:
            group.append(index)
        else:
            groups.append([index])
    return groups


def regroup(
    requests: Sequence[TextRequest], owners: Sequence[int], answers: Sequence[Any], errors: Mapping[int, Any]
) -> list[Any]:
    """Per-text answers back into one answer per request: a list for a list of texts."""
    grouped: list[list[Any]] = [[] for _ in requests]
    for owner, answer in zip(owners, answers, strict=True):
        grouped[owner].append(answer)
    return [
        errors.get(index) or (found if isinstance(requests[index].text, list) else found[0])
        for index, found in enumerate(grouped)
    ]


def pad_batch(encoded: Sequence[Sequence[int]], pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded to the longest text of the batch, and the matching attention mask (a
    tokenizer without a padding token pads with 0: the attention mask hides it)."""
    pad_id = 0 if pad_id is None else pad_id
    width = max(len(ids) for ids in encoded)
    input_ids = torch.tensor([[*ids, *[pad_id] * (width - len(ids))] for ids in encoded])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in encoded])
    return input_ids, attention


class TextPredictor(Predictor[TextRequest]):  # pylint: disable=abstract-method  # each text kind predicts
    """What both text predictors hold: tokenizer, model config, forward pass, settings, names,
    the length limit."""

    tasks: tuple[str, ...] = ()
    request_model: type[TextRequest] = TextRequest
    hf_request_model: type[HubRequest] = HubRequest

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self, tokenizer: Any, config: Any, forward: Forward, settings: TextModelSettings, names: Sequence[str]
    ) -> None:
        self._tokenizer = tokenizer
        self.forward = forward
        self._settings = settings
        self._names = list(names)
        self._limit = max_tokens(tokenizer, config)
        self._text_chars = settings.max_text_chars or TEXT_CHARS_PER_TOKEN * self._limit
        self._request_chars = settings.max_request_chars or (
            REQUEST_CHARS_PER_TOKEN * settings.max_request_tokens
        )

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (the parity check encodes its probes with it)."""
        return self._tokenizer

    def pad(self, encoded: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of one padded batch, as the forward pass takes them."""
        return pad_batch(encoded, self._tokenizer.pad_token_id)

    @property
    def max_tokens(self) -> int:
        """The longest text, in tokens, the model accepts."""
        return self._limit

    @property
    def max_text_chars(self) -> int:
        """The most characters one text may have before the tokenizer sees it."""
        return self._text_chars

    @property
    def max_request_chars(self) -> int:
        """The most characters one request (or one streamed chunk) may hold in all."""
        return self._request_chars

    @property
    def max_answer_bytes(self) -> int:
        """The most bytes one encoded answer (or streamed chunk) may have."""
        return self._settings.max_answer_bytes

    def _encode_and_check(
        self, texts: list[str], owners: list[int]
    ) -> tuple[list[list[int]], dict[int, InvalidInput]]:
        """Tokenise every text of the batch once, except those of requests over a character
        cap (the tokenizer never sees them); find the requests over a length budget. A refused
        request's texts are left empty."""
        errors = char_errors(owners, texts, self._text_chars, self._request_chars)
        todo = [index for index, owner in enumerate(owners) if owner not in errors]
        encoded: list[list[int]] = [[] for _ in texts]
        if todo:
            tokenised = self._tokenizer([texts[index] for index in todo])["input_ids"]
            for index, ids in zip(todo, tokenised, strict=True):
                encoded[index] = ids
        errors.update(
            length_errors(
                [owners[index] for index in todo],
                [len(encoded[index]) for index in todo],
                self._limit,
                self._settings.max_request_tokens,
            )
        )
        return encoded, errors

    def _in_groups(
        self, encoded: Sequence[Sequence[int]], run: Callable[[list[int]], list[Any]]
    ) -> list[Any]:
        """Call `run(indices)` on length-sorted groups of the encoded texts (each within the
        forward budget); its per-text results come back in the original order."""
        results: list[Any] = [None] * len(encoded)
        for group in forward_groups([len(ids) for ids in encoded], self._settings.forward_tokens):
            for index, result in zip(group, run(group), strict=True):
                results[index] = result
        return results

    def parse(self, payload: Any) -> Any:
        """Validate one body against this kind's request model, names and tasks; a body in
        the Hugging Face Inference API's shape (`inputs`, no `text`) is validated as that
        shape and answered in it."""
        if isinstance(payload, dict) and "inputs" in payload and "text" not in payload:
            hf_body = validate_body(self.hf_request_model, payload, "inputs")
            own = {field: value for field, value in hf_body.own_fields().items() if value is not None}
            request = validate_request(
                self.request_model, own, self._names, self.tasks, self._settings.max_texts
            )
            return request.in_hf_shape(hf_body.parameters)
        return validate_request(
            self.request_model, payload, self._names, self.tasks, self._settings.max_texts
        )

    def wants_stream(self, request: TextRequest) -> bool:
        """A list of texts with `stream: true` is answered as NDJSON lines."""
        return request.stream

    def stream_parts(self, request: TextRequest, size: int | None = None) -> list[TextRequest]:
        """A streaming request as sub-requests of `stream_chunk` texts (or `size`)."""
        return split_texts(request, size or self._settings.stream_chunk)
