"""Tiny Hugging Face checkpoints built on the spot: real tokenizers, random small weights.

`python -m modelserver tiny-models DIR` (`make tiny-models`) builds the three the text routes
serve when the Hub is out of reach (fill-mask, CamemBERT, sentiment); the tests and the load
tools build the same ones in a temporary folder. Every build gives the same files: the
vocabularies are built here by a fixed rule (the tokenizers library's trainers break ties in
hash-map order, so each of their runs made another vocabulary) and the weights come from fixed
seeds. Output biases are spread out so that candidates are never near-ties (a near-tie could
swap order between the server's padded batch and the pipeline's single text).
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (  # pylint: disable=no-name-in-module
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    CamembertConfig,
    CamembertForMaskedLM,
    CamembertTokenizerFast,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertTokenizerFast,
)
from transformers.utils import logging as hf_logging

ENGLISH = [
    "Hello I'm a fashion model.",
    "The cat sat on the mat.",
    "Paris is the capital of France.",
    "I love this movie, it is great.",
    "This film was terrible and boring.",
    "What a wonderful day.",
    "The weather is cold and grey today.",
    "She reads a book in the garden.",
]
FRENCH = [
    "Le camembert est délicieux.",
    "Paris est la capitale de la France.",
    "J'aime ce film.",
    "Le chat dort sur le canapé.",
    "Il fait beau aujourd'hui.",
    "Elle lit un livre au jardin.",
]


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CAMEMBERT_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _word_counts(corpus: list[str], normalizer: Any, pre_tokenizer: Any) -> Counter[str]:
    """How often each pre-token (a word, or a punctuation mark) of `corpus` occurs."""
    return Counter(
        piece
        for text in corpus
        for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )


def wordpiece_vocabulary(corpus: list[str], vocab_size: int = 300) -> list[str]:
    """BERT's special tokens, the corpus's characters (alone and as `##` continuations), then
    the most frequent adjacent pair merged, again and again, until `vocab_size` or every word is
    one token. Ties go to the pair first in sorted order, so the result never varies."""
    counts = _word_counts(
        corpus, normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    )
    words = {word: [word[0], *(f"##{c}" for c in word[1:])] for word in sorted(counts)}
    vocabulary = list(BERT_SPECIALS) + sorted({symbol for symbols in words.values() for symbol in symbols})
    while len(vocabulary) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += counts[word]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = best[0] + best[1].removeprefix("##")
        if merged not in vocabulary:
            vocabulary.append(merged)
        for word, symbols in words.items():
            joined: list[str] = []
            for symbol in symbols:
                if joined and (joined[-1], symbol) == best:
                    joined[-1] = merged
                else:
                    joined.append(symbol)
            words[word] = joined
    return vocabulary


def wordpiece_tokenizer(corpus: list[str], vocab_size: int = 300) -> Tokenizer:
    """A lowercasing BERT WordPiece tokenizer on `corpus`'s vocabulary, with BERT's special tokens."""
    vocabulary = wordpiece_vocabulary(corpus, vocab_size)
    tokenizer = Tokenizer(
        models.WordPiece({token: i for i, token in enumerate(vocabulary)}, unk_token="[UNK]")
    )
    tokenizer.add_special_tokens(BERT_SPECIALS)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def unigram_pieces(corpus: list[str]) -> list[tuple[str, float]]:
    """CamemBERT's special tokens, then every word of `corpus` (with its `▁` word start) and
    every character, each scored by the log of its frequency, in sorted order."""
    counts = _word_counts(corpus, normalizers.NFKC(), pre_tokenizers.Metaspace())
    characters: Counter[str] = Counter()
    for word, count in counts.items():
        for character in word:
            characters[character] += count
    frequencies = counts + characters
    total = sum(frequencies.values())
    scored = [(piece, math.log(count / total)) for piece, count in sorted(frequencies.items())]
    return [(special, 0.0) for special in CAMEMBERT_SPECIALS] + scored


def _spread(bias: torch.Tensor, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bias.copy_(torch.randn(bias.shape, generator=generator) * 4)


def _save_wordpiece(folder: Path, tokenizer_class: Any, max_positions: int) -> Any:
    """The English WordPiece tokenizer as `tokenizer_class` (BERT's or DistilBERT's), saved."""
    tokenizer = tokenizer_class(
        tokenizer_object=wordpiece_tokenizer(ENGLISH), do_lower_case=True, model_max_length=max_positions
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_bert_fill_mask(folder: Path, max_positions: int = 64) -> Path:
    """A 2-layer BERT masked LM with a WordPiece tokenizer and `[MASK]`."""
    tokenizer = _save_wordpiece(folder, BertTokenizerFast, max_positions)
    config = BertConfig.from_dict(
        {
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": max_positions,
        }
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    _spread(model.cls.predictions.bias, 1)
    model.save_pretrained(folder)
    return folder


def make_camembert_fill_mask(folder: Path, max_positions: int = 66) -> Path:
    """A 2-layer CamemBERT masked LM with a Unigram (SentencePiece-style) tokenizer and `<mask>`."""
    tokenizer = Tokenizer(models.Unigram(unigram_pieces(FRENCH), unk_id=CAMEMBERT_SPECIALS.index("<unk>")))
    tokenizer.add_special_tokens(CAMEMBERT_SPECIALS)
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tokenizer.token_to_id("<s>")), ("</s>", tokenizer.token_to_id("</s>"))],
    )
    fast = CamembertTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=max_positions - 2,
    )
    fast.save_pretrained(folder)
    config = CamembertConfig.from_dict(
        {
            "vocab_size": len(fast),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": max_positions,
            "pad_token_id": fast.pad_token_id,
            "bos_token_id": fast.bos_token_id,
            "eos_token_id": fast.eos_token_id,
        }
    )
    torch.manual_seed(0)
    model = CamembertForMaskedLM(config)
    _spread(model.lm_head.bias, 2)
    model.save_pretrained(folder)
    return folder


def make_distilbert_sentiment(folder: Path, max_positions: int = 64) -> Path:
    """A 2-layer DistilBERT classifier with NEGATIVE/POSITIVE labels, like the SST-2 model."""
    tokenizer = _save_wordpiece(folder, DistilBertTokenizerFast, max_positions)
    config = DistilBertConfig.from_dict(
        {
            "vocab_size": len(tokenizer),
            "dim": 32,
            "n_layers": 2,
            "n_heads": 2,
            "hidden_dim": 64,
            "max_position_embeddings": max_positions,
            "id2label": {0: "NEGATIVE", 1: "POSITIVE"},
            "label2id": {"NEGATIVE": 0, "POSITIVE": 1},
        }
    )
    torch.manual_seed(0)
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    return folder


TINY_MODELS = {
    "fill_mask": (make_bert_fill_mask, "FILL_MASK_MODEL"),
    "camembert": (make_camembert_fill_mask, "CAMEMBERT_MODEL"),
    "sentiment": (make_distilbert_sentiment, "SENTIMENT_MODEL"),
}


def main(argv: list[str] | None = None) -> int:
    """Build the three tiny checkpoints under DIR and print the variables that serve them."""
    parser = argparse.ArgumentParser(
        prog="python -m modelserver tiny-models",
        description="Build the tiny test checkpoints (random weights, the same files every run)"
        " for the text routes, and print the variables `make run` takes to serve them.",
    )
    parser.add_argument("folder", type=Path, help="where to build them (one subfolder each)")
    folder = parser.parse_args(argv).folder.resolve()
    hf_logging.disable_progress_bar()  # the variables are the output, for `env $(...)`
    for name, (make, variable) in TINY_MODELS.items():
        make(folder / name)
        print(f"{variable}={folder / name}")
    return 0
