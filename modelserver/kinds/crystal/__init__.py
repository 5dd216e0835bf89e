"""Crystal colour classifiers (a scikit-learn or a PyTorch model, same contract): what the
launcher, the catalogue and the API document know of the kind, framework-free.

Rows of features in, one label and one score per label out. Labels come from a file beside
the model, never from the model itself. The model code is in `worker` (and the framework's
own loader in `sklearn_classifier` or `torch_classifier`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelserver.kinds.comparison import AnswersNotComparable, Comparison
from modelserver.kinds.kind import Kind
from modelserver.payload import BODY_OVERHEAD_BYTES
from modelserver.protocols.open_inference import TensorCodec, TensorSpec, output_tensor

Framework = Literal["sklearn", "pytorch"]
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Row = Annotated[list[FiniteNumber], Field(min_length=1)]


# A row as a client's JSON encoder writes it at its longest: four float64 values of 24
# characters ("-2.2250738585072014e-308") with separators, and room for a fifth.
ROW_BYTES = 128


class CrystalSettings(BaseModel):
    """The `handler:` section of a crystal model's model-config.yaml."""

    model_config = ConfigDict(extra="forbid")

    framework: Framework
    labels_file: str = "labels.json"
    max_rows: int = Field(default=10_000, ge=1)
    threads: int = Field(default=1, ge=1)

    def max_body_bytes(self) -> int:
        """The largest body a request within `max_rows` can need (Envoy refuses longer ones)."""
        return self.max_rows * ROW_BYTES + BODY_OVERHEAD_BYTES


class CrystalRequest(BaseModel):
    """One request: rows of crystal measurements; `model` only when it names this model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    crystalData: list[Row] = Field(
        min_length=1,
        description="One row of measurements per crystal sample.",
        examples=[[[0.92, 0.12, 0.31, 0.09]]],
    )
    model: str | None = Field(default=None, description="`sklearn` or `pytorch` (/astromech).")
    model_name: str | None = Field(default=None, description="A served model name (/predict).")


class CrystalAnswer(BaseModel):
    """The answer to one request: a label and a score per label for every row, in order."""

    prediction: list[str]
    scores: list[dict[str, float]]


# The Open Inference Protocol's tensors.

CRYSTAL_FEATURES = 4  # the crystal brief's four measurements (a model with others refuses them)
CRYSTAL_LABELS = 3
CRYSTAL_IN = TensorSpec("crystalData", "FP32", (-1, CRYSTAL_FEATURES))
CRYSTAL_LABEL = TensorSpec("label", "BYTES", (-1,))
CRYSTAL_SCORES = TensorSpec("scores", "FP32", (-1, CRYSTAL_LABELS))


def _crystal_bodies(
    values: dict[str, list[Any]], _: dict[str, Any], shape: Sequence[int]
) -> list[dict[str, Any]]:
    rows, width = shape
    flat = [float(value) for value in values[CRYSTAL_IN.name]]
    return [{"crystalData": [flat[row * width : (row + 1) * width] for row in range(rows)]}]


def _crystal_outputs(answers: list[Any], _: Sequence[int]) -> dict[str, dict[str, Any]]:
    [answer] = answers
    scores = [list(row.values()) for row in answer["scores"]]
    width = len(scores[0]) if scores else CRYSTAL_LABELS
    return {
        CRYSTAL_LABEL.name: output_tensor(CRYSTAL_LABEL, [len(answer["prediction"])], answer["prediction"]),
        CRYSTAL_SCORES.name: output_tensor(
            CRYSTAL_SCORES, [len(scores), width], [s for row in scores for s in row]
        ),
    }


CRYSTAL = TensorCodec(
    inputs=(CRYSTAL_IN,),
    outputs=(CRYSTAL_LABEL, CRYSTAL_SCORES),
    bodies=_crystal_bodies,
    answers=_crystal_outputs,
    # The brief's 4 measurements and 3 labels: a model of other sizes is served on its own
    # routes, and refused here with a 422 naming the shape.
    notes={"scores": "in the order of the model's labels file"},
)


def _is_scores(row: Any) -> bool:
    """Whether `row` is one row's scores: an object of numbers."""
    return isinstance(row, dict) and all(
        isinstance(score, int | float) and not isinstance(score, bool) for score in row.values()
    )


def _rows(answer: Any) -> tuple[list[str], list[dict[str, float]]]:
    """(label, scores) of each row of one answer, checked: `CrystalAnswer`'s shape, with as
    many labels as rows of scores."""
    if not isinstance(answer, dict):
        raise AnswersNotComparable("an answer is not an object")
    labels, scores = answer.get("prediction"), answer.get("scores")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise AnswersNotComparable("an answer's prediction is not a list of labels")
    if not isinstance(scores, list) or not all(_is_scores(row) for row in scores):
        raise AnswersNotComparable("an answer's scores are not a list of objects of numbers")
    if len(labels) != len(scores):
        raise AnswersNotComparable(f"an answer has {len(labels)} labels and {len(scores)} rows of scores")
    return labels, scores


def compare_answers(primary: Any, candidate: Any) -> Comparison:
    """Rows with the same label, and the largest difference of any label's score (a label one
    answer lacks scores 0 there): a candidate may keep every label and still drift in scores."""
    primary_labels, primary_scores = _rows(primary)
    candidate_labels, candidate_scores = _rows(candidate)
    if len(primary_labels) != len(candidate_labels):
        raise AnswersNotComparable(
            f"the primary answers {len(primary_labels)} rows, the candidate {len(candidate_labels)}"
        )
    return Comparison(
        items=len(primary_labels),
        agreeing=sum(mine == theirs for mine, theirs in zip(primary_labels, candidate_labels, strict=True)),
        largest_score_difference=max(
            (
                abs(mine.get(label, 0.0) - theirs.get(label, 0.0))
                for mine, theirs in zip(primary_scores, candidate_scores, strict=True)
                for label in mine.keys() | theirs.keys()
            ),
            default=0.0,
        ),
    )


KIND = Kind(
    loader="modelserver.kinds.crystal.worker:load_crystal_predictor",
    settings=CrystalSettings,
    request=CrystalRequest,
    answer=CrystalAnswer,
    errors={
        400: "`model`/`model_name` names another model",
        422: "anomalous data",
        500: "the model failed",
    },
    example={"crystalData": [[0.92, 0.12, 0.31, 0.09]]},
    open_inference=CRYSTAL,
    compare=compare_answers,
)
