"""The topics evaluation report: Markdown and JSON for people and tools, a confusion-matrix PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def confusion_png(evaluation: dict[str, Any], title: str, path: Path) -> None:
    """Draw the confusion matrix (rows: true label, columns: predicted)."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    labels, matrix = evaluation["labels"], evaluation["confusion_matrix"]
    figure, axes = pyplot.subplots(figsize=(6.5, 5.5))
    image = axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axes.text(
                j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black"
            )
    figure.colorbar(image)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: summary table, CV scores, per-class table of each model."""
    data = [f"Data: {report['data']}.", ""] if report.get("data") else []
    lines = [
        "# Topic classifier evaluation",
        "",
        *data,
        f"Training set: {report['train_size']} texts; test set: {report['test_size']} texts (used once, "
        f"after choosing the model by {report['folds']}-fold cross-validation on the training set).",
        "",
        "| model | CV accuracy (train) | test accuracy | test macro-F1 |",
        "|---|---|---|---|",
    ]
    for role in ("baseline", "improved"):
        model = report[role]
        lines.append(
            f"| {role}: `{model['name']}` | {report['cv_accuracy'][model['name']]:.4f} | "
            f"{model['test']['accuracy']:.4f} | {model['test']['macro_f1']:.4f} |"
        )
    lines += ["", "Every candidate's cross-validated accuracy on the training set:", ""]
    lines += [f"- `{name}`: {score:.4f}" for name, score in sorted(report["cv_accuracy"].items())]
    for role in ("baseline", "improved"):
        model = report[role]
        lines += [
            "",
            f"## {role.capitalize()}: `{model['name']}`",
            "",
            "| label | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for label, scores in model["test"]["per_class"].items():
            cells = [f"{scores[key]:.3f}" for key in ("precision", "recall", "f1")]
            lines.append(f"| {label} | {' | '.join(cells)} | {scores['support']} |")
        lines += ["", f"![confusion matrix]({model['confusion_png']})"]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write `topics_evaluation.md`, `.json` and one confusion PNG per model; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for role in ("baseline", "improved"):
        png = out_dir / f"topics_confusion_{role}.png"
        confusion_png(report[role]["test"], f"{role}: {report[role]['name']}", png)
        report[role]["confusion_png"] = png.name
        written.append(png)
    (out_dir / "topics_evaluation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / "topics_evaluation.md").write_text(markdown(report), encoding="utf-8")
    return [out_dir / "topics_evaluation.md", out_dir / "topics_evaluation.json", *written]
