"""Train, select and evaluate the newsgroup topic classifier; write the report.

    python -m archive_scripts.train_topics [--train F] [--test F] [--data auto|files|20newsgroups]
                                           [--out-dir docs] [--model-out F]

Data: --train/--test, else TOPICS_TRAIN/TOPICS_TEST, else ../shared/seed_data/topics/; where
none of those files are there (or with --data 20newsgroups; the default is TOPICS_DATA, else
auto), scikit-learn's 20 Newsgroups download, its train and test subsets, as the archive build
does. --data files never downloads.
Writes docs/topics_evaluation.{md,json} and confusion-matrix PNGs; --model-out also saves the
chosen model with skops (the archive build trains its own copy the same way).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

from modelserver.errors import ConfigError
from modelserver.project import PROJECT_ROOT, environment
from modelserver.training.topics import (
    NEWSGROUPS_NOTE,
    Dataset,
    Fetcher,
    evaluation_report,
    newsgroups_dataset,
    read_dataset,
    save_model,
)
from modelserver.training.topics_report import write_report

SHARED_TOPICS = PROJECT_ROOT.parent / "shared" / "seed_data" / "topics"
DOWNLOAD = "20newsgroups"


def load_data(
    args: argparse.Namespace, environ: Mapping[str, str], fetcher: Fetcher | None = None
) -> tuple[Dataset, Dataset, str]:
    """The train and test sets and what they are: the files named (an explicit one that is
    missing is an error), the default files, or, where those are absent, the download."""
    train = args.train or environ.get("TOPICS_TRAIN")
    test = args.test or environ.get("TOPICS_TEST")
    if args.data == DOWNLOAD:
        if train or test:
            raise ConfigError(
                f"--data {DOWNLOAD} and --train/--test (or TOPICS_TRAIN/TEST) both name the data"
            )
    else:
        paths = [
            Path(train or SHARED_TOPICS / "train.jsonl.gz"),
            Path(test or SHARED_TOPICS / "test.jsonl.gz"),
        ]
        if train or test or args.data == "files" or all(path.is_file() for path in paths):
            whose = "files" if train or test else "the brief's files (../shared/seed_data/topics)"
            note = f"{whose} {paths[0].name} and {paths[1].name}"
            return read_dataset(paths[0]), read_dataset(paths[1]), note
    logging.getLogger(__name__).info("no topics files: using the 20 Newsgroups download")
    return newsgroups_dataset("train", fetcher), newsgroups_dataset("test", fetcher), NEWSGROUPS_NOTE


def main(argv: list[str] | None = None, fetcher: Fetcher | None = None) -> int:
    """Run the evaluation and print the summary."""
    environ = environment()
    parser = argparse.ArgumentParser(
        prog="python -m archive_scripts.train_topics", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--train", type=Path)
    parser.add_argument("--test", type=Path)
    parser.add_argument(
        "--data", choices=("auto", "files", DOWNLOAD), default=environ.get("TOPICS_DATA") or "auto"
    )
    parser.add_argument("--out-dir", type=Path, default=PROJECT_ROOT / "docs")
    parser.add_argument("--model-out", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        train, test, data = load_data(args, environ, fetcher)
        report, improved = evaluation_report(train, test, args.folds, data)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in write_report(report, args.out_dir):
        print(f"wrote {path}")
    if args.model_out:
        save_model(improved, args.model_out)
        print(f"wrote {args.model_out}")
    print(f"data: {data}")
    for role in ("baseline", "improved"):
        test_scores = report[role]["test"]
        name = report[role]["name"]
        print(
            f"{role:8} {name}: accuracy {test_scores['accuracy']:.4f}, macro-F1 {test_scores['macro_f1']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
