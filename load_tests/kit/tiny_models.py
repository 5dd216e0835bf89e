"""Tiny Hugging Face checkpoints built on the spot: real tokenizers, random small weights.

The Hub is unreachable here, so the tests and the load tools build these in a temporary folder
and serve them with the very same handlers. Output biases are spread out so that candidates are
never near-ties (a near-tie could swap order between the server's padded batch and the
pipeline's single text).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
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


def wordpiece_tokenizer(corpus: list[str], vocab_size: int = 300) -> Tokenizer:
    """A lowercasing BERT WordPiece tokenizer trained on `corpus`, with BERT's special tokens."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(
        corpus * 10, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


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
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(
        FRENCH * 10, trainers.UnigramTrainer(vocab_size=150, special_tokens=specials, unk_token="<unk>")
    )
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
