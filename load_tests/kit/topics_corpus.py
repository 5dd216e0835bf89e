"""A small newsgroup-like corpus written on the spot: six topics, each with its own words.

Real data (`../shared/seed_data/topics`) is used when present; this corpus keeps the topics
tests and the soak run going everywhere, fast.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

TOPIC_WORDS = {
    "space": "orbit nasa shuttle launch moon satellite rocket astronaut telescope mars",
    "electronics": "circuit voltage resistor capacitor amplifier solder transistor diode battery wire",
    "cryptography": "encryption key cipher clipper rsa privacy algorithm secure pgp nsa",
    "politics": "government president congress vote law senate election policy tax rights",
    "hockey": "puck goalie nhl ice stanley cup leafs penalty skate playoff",
    "baseball": "pitcher inning homerun bat mets yankees batting league umpire dodgers",
}
COMMON = [
    "the", "a", "and", "of", "to", "in", "is", "it", "that", "this",
    "for", "with", "on", "was", "are", "be", "have", "not", "but",
]  # fmt: skip


def _text(rng: random.Random, label: str) -> str:
    own = TOPIC_WORDS[label].split()
    words = [rng.choice(own) for _ in range(8)] + [rng.choice(COMMON) for _ in range(10)]
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


def write_corpus(folder: Path, per_label: int = 20, seed: int = 0) -> tuple[Path, Path]:
    """train.jsonl.gz and test.jsonl.gz in `folder`; returns their paths."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, count in (("train", per_label), ("test", per_label // 2)):
        path = folder / f"{name}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as out:
            for label in TOPIC_WORDS:
                for _ in range(count):
                    out.write(json.dumps({"text": _text(rng, label), "label": label}) + "\n")
        paths.append(path)
    return paths[0], paths[1]
