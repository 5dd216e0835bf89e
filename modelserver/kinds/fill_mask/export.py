"""Fill-mask's build-time export: its probe texts for the parity gate (one mask, several masks,
short and long texts), run through the text kinds' shared export."""

from __future__ import annotations

from pathlib import Path

from modelserver.kinds.fill_mask import TASKS
from modelserver.kinds.fill_mask.worker import load_fill_mask_predictor
from modelserver.kinds.text import PUBLIC_MASK, TextModelSettings
from modelserver.kinds.text import export as text_export

FILL_MASK_PROBES = [
    f"{PUBLIC_MASK}.",
    f"Hello I'm a {PUBLIC_MASK} model.",
    f"The {PUBLIC_MASK} sat on the {PUBLIC_MASK} near the {PUBLIC_MASK}.",
    f"Paris is the {PUBLIC_MASK} of France, and Berlin is the capital of {PUBLIC_MASK}.",
]
FILL_MASK = text_export.ExportTask(
    TASKS[0], load_fill_mask_predictor, FILL_MASK_PROBES, f" It was {PUBLIC_MASK}."
)


def export(archive_dir: Path, settings: TextModelSettings) -> text_export.ParityReport:
    """Compile the encoder (and its masked-LM head) into `archive_dir` and gate it."""
    return text_export.export(FILL_MASK, archive_dir, settings)
