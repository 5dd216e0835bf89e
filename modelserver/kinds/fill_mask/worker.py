"""The fill-mask kind's worker part: a masked-LM checkpoint answering exactly as transformers'
pipeline does. Imported by model workers and the build's export child only.

A TorchServe batch is tokenised once, padded to its longest text; the encoder runs once and
the vocabulary-sized head runs only at the mask positions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForMaskedLM

from modelserver.backends import Placement
from modelserver.backends.forward import (
    OPENVINO_HEAD_FILE,
    Forward,
    Graph,
    OpenVinoForward,
    compiled_graph,
    load_forward,
)
from modelserver.errors import ConfigError, InvalidInput
from modelserver.kinds import ModelFiles
from modelserver.kinds.fill_mask import TASKS, FillMaskParameters, FillMaskRequest, HubFillMaskRequest
from modelserver.kinds.text import PUBLIC_MASK, TextModelSettings
from modelserver.kinds.text.worker import (
    TextPredictor,
    flatten,
    load_model,
    load_tokenizer_and_config,
    regroup,
    text_placement,
)

# Bytes of one candidate's JSON besides its token_str and sequence: keys and punctuation (45),
# the longest float (24), a token id (10), the list's comma, the space a filled token may add
# to the sequence and the few a filled token may keep the decoder's clean-up from removing.
CANDIDATE_BYTES = 96
MASK_BYTES = 4  # the brackets and comma of one mask's list
TEXT_BYTES = 32  # a text's place in a list, or its NDJSON line's `{"index": i, "result": ...}`

Head = Callable[[torch.Tensor], torch.Tensor]
# The masked-LM head of each architecture, applied to hidden states at mask positions only.
HEADS: dict[str, Callable[[Any], Head]] = {
    "bert": lambda model: model.cls,
    "roberta": lambda model: model.lm_head,
    "camembert": lambda model: model.lm_head,
    "xlm-roberta": lambda model: model.lm_head,
    "distilbert": lambda model: torch.nn.Sequential(
        model.vocab_transform, model.activation, model.vocab_layer_norm, model.vocab_projector
    ),
}


class FillMaskPredictor(TextPredictor):
    """Validates fill-mask requests and answers a batch of them with one encoder pass."""

    tasks = TASKS
    request_model = FillMaskRequest
    hf_request_model = HubFillMaskRequest

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self,
        tokenizer: Any,
        config: Any,
        forward: Forward,
        head: Head,
        settings: TextModelSettings,
        names: Sequence[str],
    ) -> None:
        super().__init__(tokenizer, config, forward, settings, names)
        if tokenizer.mask_token is None:
            raise ConfigError("the tokenizer has no mask token")
        self.head = head
        # The longest token as JSON: a bound on token_str, and on what filling it adds to sequence.
        self._vocabulary: dict[str, int] = tokenizer.get_vocab()
        self._token_bytes = max((json_size(token) for token in self._vocabulary), default=0)

    def parse(self, payload: Any) -> FillMaskRequest:
        """Validate one body: types, top_k, a mask in every text, a bounded answer size."""
        request: FillMaskRequest = super().parse(payload)
        mask = self._tokenizer.mask_token
        masks = 0
        for index, text in enumerate(request.texts):
            count = text.count(PUBLIC_MASK) + (text.count(mask) if mask != PUBLIC_MASK else 0)
            if not count:
                where = f"text[{index}]" if isinstance(request.text, list) else "text"
                raise InvalidInput(f"{where} has no {PUBLIC_MASK} to fill")
            masks += count
        request.restricted_to(self.target_ids(request.hf_shape))
        if request.target_ids == []:
            raise InvalidInput("parameters.targets: no target is a token of this model")
        if masks * request.per_mask > self._settings.max_candidates:
            raise InvalidInput(
                f"{masks} masks x top_k {request.per_mask} asks for {masks * request.per_mask} candidates; "
                f"at most {self._settings.max_candidates} per request"
            )
        return request

    def predict(self, requests: Sequence[FillMaskRequest]) -> list[Any]:
        """One answer (or error) per request; every text of the batch tokenised together."""
        texts, owners = flatten(requests)
        mask = self._tokenizer.mask_token
        encoded, errors = self._encode_and_check([text.replace(PUBLIC_MASK, mask) for text in texts], owners)
        errors.update(self._size_errors(requests, encoded, owners, errors))
        kept = [i for i, owner in enumerate(owners) if owner not in errors]
        ids = [encoded[i] for i in kept]
        top_ks = [requests[owners[i]].top_k for i in kept]
        targets = [requests[owners[i]].target_ids for i in kept]
        answers = self._in_groups(
            ids,
            lambda group: self._fill(
                [ids[i] for i in group], [top_ks[i] for i in group], [targets[i] for i in group]
            ),
        )
        return regroup(requests, [owners[i] for i in kept], answers, errors)

    def target_ids(self, parameters: Any) -> list[int] | None:
        """The token ids a Hugging Face `targets` parameter restricts the candidates to, as
        transformers' pipeline picks them: a word of the vocabulary, else its first token."""
        if not isinstance(parameters, FillMaskParameters) or parameters.targets is None:
            return None
        words = [parameters.targets] if isinstance(parameters.targets, str) else parameters.targets
        vocabulary = self._vocabulary
        found: set[int] = set()
        for word in words:
            if word in vocabulary:
                found.add(vocabulary[word])
                continue
            ids = self._tokenizer(word, add_special_tokens=False)["input_ids"]
            if ids:
                found.add(ids[0])
        return sorted(found)

    def answer_bound(self, ids: Sequence[int], top_k: int) -> int:
        """An upper bound on the bytes of one text's answer, known before any candidate is
        decoded: every candidate repeats the whole text (decoded once here, as its sequence
        will be) with one token in place of a mask."""
        masks = ids.count(self._tokenizer.mask_token_id)
        pad = self._tokenizer.pad_token_id
        text = self._tokenizer.decode([t for t in ids if t != pad], skip_special_tokens=masks == 1)
        candidate = CANDIDATE_BYTES + 2 * self._token_bytes + json_size(text)
        return TEXT_BYTES + masks * (MASK_BYTES + top_k * candidate)

    def _size_errors(
        self,
        requests: Sequence[FillMaskRequest],
        encoded: Sequence[Sequence[int]],
        owners: Sequence[int],
        errors: Mapping[int, InvalidInput],
    ) -> dict[int, InvalidInput]:
        """A 422 for each request (not refused yet) whose answer could be longer than one
        response may be; decoding its candidates would be wasted work."""
        totals: dict[int, int] = {}
        for index, owner in enumerate(owners):
            if owner not in errors:
                bound = self.answer_bound(encoded[index], requests[owner].top_k)
                totals[owner] = totals.get(owner, 0) + bound
        cap = self._settings.max_answer_bytes
        return {
            owner: InvalidInput(
                f"the answer could be {total} bytes long; at most {cap} bytes per answer: "
                "ask for a smaller top_k, or fewer masks or texts"
            )
            for owner, total in totals.items()
            if total > cap
        }

    def _fill(
        self, encoded: list[list[int]], top_ks: list[int], targets: list[list[int] | None]
    ) -> list[Any]:
        """Run the model over the encoded texts (padded together); format like the pipeline
        (candidates among `targets` only, where a text has them)."""
        rows, columns, probabilities = self.mask_probabilities(encoded)
        results: list[list[list[dict[str, Any]]]] = [[] for _ in encoded]
        for mask_index, row in enumerate(rows.tolist()):
            allowed = targets[row]
            if allowed is None:
                scores, tokens = probabilities[mask_index].topk(top_ks[row])
            else:
                candidates = torch.tensor(allowed, dtype=torch.long)
                scores, picked = probabilities[mask_index][candidates].topk(min(top_ks[row], len(allowed)))
                tokens = candidates[picked]
            results[row].append(self._candidates(encoded[row], int(columns[mask_index]), scores, tokens))
        return [masks[0] if len(masks) == 1 else masks for masks in results]

    def mask_probabilities(
        self, encoded: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, column) of every mask in the padded batch, and its vocabulary distribution."""
        input_ids, attention = self.pad(encoded)
        rows, columns = torch.nonzero(input_ids == self._tokenizer.mask_token_id, as_tuple=True)
        hidden = self.forward(input_ids, attention)
        with torch.inference_mode():
            logits = self.head(hidden[rows.to(hidden.device), columns.to(hidden.device)])
            return rows, columns, logits.float().softmax(dim=-1).cpu()

    def distributions(self, encoded: Sequence[Sequence[int]]) -> torch.Tensor:
        """The vocabulary distribution at every mask of the batch, in order (parity checks)."""
        return self.mask_probabilities(encoded)[2]

    def _candidates(
        self, ids: list[int], position: int, scores: torch.Tensor, tokens: torch.Tensor
    ) -> list[dict[str, Any]]:
        """The pipeline's answer for one mask: score, token, token_str, sequence."""
        single_mask = ids.count(self._tokenizer.mask_token_id) == 1
        pad = self._tokenizer.pad_token_id
        candidates = []
        for score, token in zip(scores.tolist(), tokens.tolist(), strict=True):
            filled = [t for t in (token if i == position else t for i, t in enumerate(ids)) if t != pad]
            candidates.append(
                {
                    "score": score,
                    "token": token,
                    "token_str": self._tokenizer.decode([token]),
                    "sequence": self._tokenizer.decode(filled, skip_special_tokens=single_mask),
                }
            )
        return candidates


def json_size(text: str) -> int:
    """Bytes of `text` as a JSON string, escapes included, as the answer is encoded."""
    return len(json.dumps(text))


def encoder_graph(model: Any) -> Graph:
    """What runs, eagerly or compiled, before the head picks the mask positions: the encoder
    alone (ids to last hidden state), or the whole model where the head is not known."""
    if model.config.model_type in HEADS:
        return Graph(model.base_model, "last_hidden_state")
    return Graph(model, "logits")


def mask_head(config: Any, model: Any | None, model_dir: Path, placement: Placement, threads: int) -> Head:
    """The vocabulary-sized head, run at mask positions only: the graph exported beside the
    compiled encoder, or the PyTorch model's own on the encoder's device; nothing where the
    forward pass already ends in logits (an architecture without a known head)."""
    if config.model_type not in HEADS:
        return torch.nn.Identity()
    if model is None:
        return OpenVinoForward(compiled_graph(model_dir, OPENVINO_HEAD_FILE), threads)
    return HEADS[config.model_type](model).to(placement.device)


def load_fill_mask_predictor(files: ModelFiles[TextModelSettings]) -> FillMaskPredictor:
    """Build the predictor from an archive's model/ folder and `handler:` settings; the PyTorch
    model is loaded only when PyTorch runs it."""
    settings = files.settings
    tokenizer, config = load_tokenizer_and_config(files)
    placement = text_placement(files)
    model = None if placement.backend == "openvino" else load_model(files, AutoModelForMaskedLM)
    forward = load_forward(placement, files.model_dir, settings.threads, lambda: encoder_graph(model))
    head = mask_head(config, model, files.model_dir, placement, settings.threads)
    return FillMaskPredictor(tokenizer, config, forward, head, settings, files.names)
