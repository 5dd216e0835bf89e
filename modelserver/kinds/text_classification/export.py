"""Text classification's build-time export: its probe texts for the parity gate, run through
the text kinds' shared export."""

from __future__ import annotations

from pathlib import Path

from modelserver.kinds.text import TextModelSettings
from modelserver.kinds.text import export as text_export
from modelserver.kinds.text_classification.worker import load_text_classification_predictor

CLASSIFICATION_PROBES = [
    "Great.",
    "I love this movie, it is great.",
    "This film was terrible and boring, I want my money back.",
]
TEXT_CLASSIFICATION = text_export.ExportTask(
    "text-classification", load_text_classification_predictor, CLASSIFICATION_PROBES
)


def export(archive_dir: Path, settings: TextModelSettings) -> text_export.ParityReport:
    """Compile the classifier's forward pass into `archive_dir` and gate it."""
    return text_export.export(TEXT_CLASSIFICATION, archive_dir, settings)
