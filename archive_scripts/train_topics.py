"""Train, select and evaluate the newsgroup topic classifier; write the report.

    python -m archive_scripts.train_topics [--train F] [--test F] [--out-dir docs] [--model-out F]

Data: --train/--test, else TOPICS_TRAIN/TOPICS_TEST, else ../shared/seed_data/topics/.
Writes docs/topics_evaluation.{md,json} and confusion-matrix PNGs; --model-out also saves the
chosen model with skops (the archive build trains its own copy the same way).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from modelserver.errors import ConfigError
from modelserver.project import PROJECT_ROOT, environment
from modelserver.training.topics import evaluation_report, read_dataset, save_model
from modelserver.training.topics_report import write_report

SHARED_TOPICS = PROJECT_ROOT.parent / "shared" / "seed_data" / "topics"


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation and print the summary."""
    environ = environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--train", type=Path, default=Path(environ.get("TOPICS_TRAIN") or SHARED_TOPICS / "train.jsonl.gz")
    )
    parser.add_argument(
        "--test", type=Path, default=Path(environ.get("TOPICS_TEST") or SHARED_TOPICS / "test.jsonl.gz")
    )
    parser.add_argument("--out-dir", type=Path, default=PROJECT_ROOT / "docs")
    parser.add_argument("--model-out", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report, improved = evaluation_report(read_dataset(args.train), read_dataset(args.test), args.folds)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in write_report(report, args.out_dir):
        print(f"wrote {path}")
    if args.model_out:
        save_model(improved, args.model_out)
        print(f"wrote {args.model_out}")
    for role in ("baseline", "improved"):
        test = report[role]["test"]
        name = report[role]["name"]
        print(f"{role:8} {name}: accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
