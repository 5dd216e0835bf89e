"""The benchmark's timing models: bert-base-uncased's architecture (BertForMaskedLM, 12 layers,
hidden 768, vocabulary 30,522, 110M parameters) and distilbert-base-uncased-finetuned-sst-2's
(DistilBertForSequenceClassification, 6 layers, hidden 768, 2 labels, 67M), with random weights.

The Hub is unreachable here; compute time depends on the shapes, not on the weights. A real
checkpoint folder can be passed instead (`make bench BENCH_MODEL=/path/to/bert-base-uncased`),
and the results say which one was used. The tokenizer is a WordPiece trained on the
benchmark's own sentences, so common words are one token each, as with the real vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import models
from transformers import (  # pylint: disable=no-name-in-module
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertTokenizerFast,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from load_tests.bench.scenarios import SENTENCES
from modelserver.tools.tiny_models import ENGLISH, wordpiece_tokenizer

RANDOM_WEIGHTS = "bert-base-uncased architecture, random weights (seed 0)"
SENTIMENT_RANDOM_WEIGHTS = "distilbert-base-uncased-finetuned-sst-2-english architecture, random weights"
VOCABULARY = 30522


def _timing_wordpiece() -> models.Model:
    """A WordPiece trained on the benchmark's sentences, padded to bert-base-uncased's
    vocabulary size (like its [unused] entries), so every candidate id the model scores
    decodes to a token, as with the real vocabulary."""
    corpus = [s.replace("[MASK]", "word") for s in SENTENCES] + ENGLISH
    wordpiece = wordpiece_tokenizer(corpus, vocab_size=2000)
    vocab = wordpiece.get_vocab()
    vocab.update({f"[unused{i}]": i for i in range(len(vocab), VOCABULARY)})
    wordpiece.model = models.WordPiece(vocab=vocab, unk_token="[UNK]")
    return wordpiece


def _write(
    folder: Path, tokenizer: PreTrainedTokenizerFast, make_model: Callable[[], PreTrainedModel]
) -> Path:
    """Save the tokenizer, then the model `make_model()` builds with seed 0, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    make_model().save_pretrained(folder)
    return folder


def build_timing_model(folder: Path) -> Path:
    """Write the random-weight bert-base-shaped masked LM and its tokenizer into `folder`."""
    tokenizer = BertTokenizerFast(
        tokenizer_object=_timing_wordpiece(), do_lower_case=True, model_max_length=512
    )
    return _write(
        folder, tokenizer, lambda: BertForMaskedLM(BertConfig.from_dict({"vocab_size": VOCABULARY}))
    )


def build_sentiment_timing_model(folder: Path) -> Path:
    """Write the random-weight SST-2-DistilBERT-shaped classifier and its tokenizer into `folder`."""
    tokenizer = DistilBertTokenizerFast(
        tokenizer_object=_timing_wordpiece(), do_lower_case=True, model_max_length=512
    )
    labels = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}
    config = DistilBertConfig.from_dict({"vocab_size": VOCABULARY, **labels})
    return _write(folder, tokenizer, lambda: DistilBertForSequenceClassification(config))
