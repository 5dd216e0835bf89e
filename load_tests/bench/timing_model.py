"""The benchmark's timing model: bert-base-uncased's architecture (BertForMaskedLM, 12 layers,
hidden 768, vocabulary 30,522, 110M parameters) with random weights.

The Hub is unreachable here; compute time depends on the shapes, not on the weights. A real
checkpoint folder can be passed instead (`make bench BENCH_MODEL=/path/to/bert-base-uncased`),
and the results say which one was used. The tokenizer is a WordPiece trained on the
benchmark's own sentences, so common words are one token each, as with the real vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import models
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

from load_tests.bench.scenarios import SENTENCES
from tests.tiny_models import ENGLISH, wordpiece_tokenizer

RANDOM_WEIGHTS = "bert-base-uncased architecture, random weights (seed 0)"
VOCABULARY = 30522


def build_timing_model(folder: Path) -> Path:
    """Write the random-weight bert-base-shaped masked LM and its tokenizer into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = [s.replace("[MASK]", "word") for s in SENTENCES] + ENGLISH
    wordpiece = wordpiece_tokenizer(corpus, vocab_size=2000)
    # Pad the vocabulary to bert-base-uncased's size (like its [unused] entries), so every
    # candidate id the model scores decodes to a token, as with the real vocabulary.
    vocab = wordpiece.get_vocab()
    vocab.update({f"[unused{i}]": i for i in range(len(vocab), VOCABULARY)})
    wordpiece.model = models.WordPiece(vocab=vocab, unk_token="[UNK]")
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece,
        do_lower_case=True,
        model_max_length=512,
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig.from_dict({"vocab_size": VOCABULARY}))
    model.save_pretrained(folder)
    return folder


def parameter_count(folder: Path) -> int:
    """Parameters of the masked LM in `folder` (tied embeddings counted once)."""
    model = BertForMaskedLM.from_pretrained(folder)
    return sum(p.numel() for p in model.parameters())
