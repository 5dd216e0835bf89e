"""Export a text model's forward graph to OpenVINO at archive build, and prove it answers as
PyTorch eager does before anything serves it: what the text kinds' `export` modules share.

Build time only (the archive builder's export child, `python -m modelserver.build.export`). The
archive folder holds `model/` (from_pretrained format); the graph (for fill-mask: the encoder,
and its masked-LM head as a second graph) and its parity report are written to its `compiled/`.

The parity gate, on a fixed probe set (a one-word text, short and long texts, one and several
masks, all in one mixed-length batch):
- the graph's output (last hidden state at real tokens, or logits) within OUTPUT_TOLERANCE of
  eager's, relative to the largest value;
- every score the answers are made of (the vocabulary distribution at each mask, each label's
  score) within SCORE_TOLERANCE;
- the ranking of the top candidates identical, except where two candidates' eager scores are
  themselves within SCORE_TOLERANCE (a near-tie: either order is right; such swaps are counted);
- the served answers of the batch identical but for float rounding (and near-tie swaps).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelserver.backends import COMPILED_SUBDIR, PARITY_REPORT
from modelserver.backends.forward import OPENVINO_FILE, OPENVINO_HEAD_FILE, TorchForward
from modelserver.errors import ServingError
from modelserver.kinds import ModelFiles
from modelserver.kinds.text import PUBLIC_MASK, TextModelSettings
from modelserver.kinds.text.worker import TextPredictor

# Answers' scores are probabilities: 1e-5 is what a user comparing with the pipeline tolerates.
SCORE_TOLERANCE = 1e-5
# The graph's raw output, relative to max(1, its largest magnitude). Measured: 3.3e-6 (ONNX
# Runtime) and 4.1e-6 (OpenVINO) on the 12-layer bert-base shape, 5e-6 on an AVX-512 machine;
# reordered fp32 sums grow with depth and width, so the bound keeps a 20x margin over those.
OUTPUT_TOLERANCE = 1e-4
# Fill-mask's top_k goes up to 50: its ranking is checked that deep.
RANKED = 50

LONG_SENTENCE = "The weather is cold and grey today, so she reads a book in the garden. "
# int8 is calibrated on other texts than the probes it is then measured on.
CALIBRATION = [
    "The children played in the park until it was dark.",
    "Our flight was delayed by two hours because of the storm.",
    "He cooked pasta with tomatoes, garlic and fresh basil.",
    "The meeting starts at ten and should end before noon.",
    "She bought a new bicycle to ride to work every day.",
    "The river flows through the old town towards the sea.",
    "Please send me the report by Friday afternoon.",
    "The concert was loud, crowded and absolutely wonderful.",
    "Scientists found water ice near the south pole of the moon.",
    "My neighbour plays the piano every evening after dinner.",
    "The shop on the corner sells bread, milk and newspapers.",
    "We walked along the beach and watched the sun go down.",
]


@dataclass(frozen=True)
class ExportTask:
    """What the export needs of one text kind: its task's name (in the parity report), its
    loader and the probe texts of the gate."""

    name: str
    load: Callable[[ModelFiles[TextModelSettings]], TextPredictor]
    probes: Sequence[str]
    long_suffix: str = ""  # what ends the long probe (fill-mask: a mask)


@dataclass
class ParityReport:  # pylint: disable=too-many-instance-attributes  # a flat record, dumped as JSON
    """What the gate measured; written beside the graph and logged by the builder."""

    task: str
    quantize: str
    probes: int = 0
    longest_probe_tokens: int = 0
    output_max_abs_diff: float = 0.0
    output_bound: float = 0.0
    score_max_abs_diff: float = 0.0
    score_tolerance: float = SCORE_TOLERANCE
    near_tie_swaps: int = 0
    rows: int = 0  # score rows compared: one per mask (fill-mask) or per text
    top1_agreed: int = 0
    export_s: float = 0.0
    problems: list[str] = field(default_factory=list)  # beyond fp32 rounding
    broken: list[str] = field(default_factory=list)  # unusable whatever the precision

    @property
    def top1_agreement(self) -> float:
        """The share of rows whose best candidate is the same on both backends."""
        return self.top1_agreed / self.rows if self.rows else 1.0

    def as_json(self) -> dict[str, Any]:
        """The report as written beside the graph and printed to the builder."""
        return {
            **asdict(self),
            "top1_agreement": self.top1_agreement,
            "passed": self.passed,
            "summary": self.summary(),
        }

    @property
    def passed(self) -> bool:
        """Whether the compiled graph may serve: fp32 must match eager; int8 (opt-in, and it
        changes answers) must only give finite answers of the right shape, its agreement
        being measured and reported."""
        return not self.broken and (self.quantize == "int8" or not self.problems)

    @property
    def first_problem(self) -> str:
        """Why it may not serve."""
        return (self.broken or self.problems or ["none"])[0]

    def summary(self) -> str:
        """One line for the build log."""
        return (
            f"output diff {self.output_max_abs_diff:.1e} (bound {self.output_bound:.1e}), "
            f"score diff {self.score_max_abs_diff:.1e} (tolerance {self.score_tolerance:.0e}), "
            f"{self.near_tie_swaps} near-tie swaps, top-1 agreement {self.top1_agreement:.0%}, "
            f"export {self.export_s:.1f} s"
        )


def probe_texts(predictor: TextPredictor, task: ExportTask) -> list[str]:
    """The probe set, with a long text of about half the model's limit (at most 256 tokens);
    a probe the model cannot take whole (a small vocabulary spells words out) is left out."""
    target = min(predictor.max_tokens // 2, 256)
    long_text = LONG_SENTENCE
    while len(encode(predictor, [long_text + LONG_SENTENCE + task.long_suffix])[0]) <= target:
        long_text += LONG_SENTENCE
    texts = [*task.probes, long_text.strip() + task.long_suffix]
    lengths = [len(ids) for ids in encode(predictor, texts)]
    return [text for text, length in zip(texts, lengths, strict=True) if length <= predictor.max_tokens]


def encode(predictor: TextPredictor, texts: Sequence[str]) -> list[list[int]]:
    """The probes as token ids (the public mask written as the model's own)."""
    mask = getattr(predictor.tokenizer, "mask_token", None) or PUBLIC_MASK
    return predictor.tokenizer([text.replace(PUBLIC_MASK, mask) for text in texts])["input_ids"]


def convert(
    graph: torch.nn.Module, example: tuple[torch.Tensor, ...], target: Path, calibration: Any
) -> None:
    """Convert the eager graph with OpenVINO and save it in fp32 (or int8 when `calibration`
    batches are given: NNCF's post-training quantisation calibrated on them)."""
    import openvino  # pylint: disable=import-outside-toplevel

    model = openvino.convert_model(graph, example_input=example)
    if calibration is not None:
        import nncf  # pylint: disable=import-outside-toplevel

        model = nncf.quantize(
            model,
            nncf.Dataset(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(model, str(target), compress_to_fp16=False)


def convert_head(eager: TextPredictor, example: tuple[torch.Tensor, ...], target: Path) -> None:
    """Fill-mask's masked-LM head as a graph of its own beside the encoder's, always fp32 (int8
    too: it runs at the mask positions only), so a compiled worker never builds the torch model."""
    head = getattr(eager, "head", None)
    if isinstance(head, torch.nn.Module) and not isinstance(head, torch.nn.Identity):
        hidden = eager.forward(*example)
        convert(head, (hidden[:, 0, :].clone(),), target, None)  # a clone: not an inference tensor


def _ranking_swaps(reference: torch.Tensor, compiled: torch.Tensor, report: ParityReport) -> None:
    """Compare the top candidates of every row; a swap is allowed only between near-ties."""
    depth = min(RANKED, reference.shape[-1])
    ours, theirs = reference.topk(depth).indices, compiled.topk(depth).indices
    for row, (mine, other) in enumerate(zip(ours.tolist(), theirs.tolist(), strict=True)):
        report.rows += 1
        report.top1_agreed += mine[0] == other[0]
        for rank, (expected, got) in enumerate(zip(mine, other, strict=True)):
            if expected == got:
                continue
            gap = abs(float(reference[row, expected] - reference[row, got]))
            if gap > SCORE_TOLERANCE:
                report.problems.append(
                    f"row {row} rank {rank}: token {got} instead of {expected} (score gap {gap:.1e})"
                )
                break
            report.near_tie_swaps += 1


def _swap_is_a_tie(expected: Sequence[Any], got: Sequence[Any], rank: int) -> bool:
    """Whether the candidate `got[rank]` (not `expected[rank]`) is a near-tie swap: eager
    itself scores that token within the tolerance of its own candidate at this rank (or, when
    eager's list does not hold it, just below its last one)."""
    target = float(expected[rank]["score"])
    for candidate in expected:
        if candidate.get("token") == got[rank].get("token"):
            return abs(float(candidate["score"]) - target) <= SCORE_TOLERANCE
    return float(got[rank]["score"]) <= float(expected[-1]["score"]) + SCORE_TOLERANCE


def _is_candidate_list(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(c, dict) and "token" in c for c in value)
    )


def answers_differ(expected: Any, got: Any, exact_labels: bool = True) -> str | None:
    """Where two served answers differ beyond float rounding (None if they do not): the same
    structure, strings and ints; floats within SCORE_TOLERANCE; in a list of fill-mask
    candidates a different token only as a near-tie swap (`_swap_is_a_tie`), in a label only
    where `exact_labels` is False (the caller found a near-tie between labels)."""
    parts: list[tuple[str, Any, Any]] = []
    if isinstance(expected, ServingError) or isinstance(got, ServingError):
        same = type(expected) is type(got)
    elif isinstance(expected, float) and isinstance(got, float):
        same = abs(expected - got) <= SCORE_TOLERANCE
    elif isinstance(expected, dict) and isinstance(got, dict) and expected.keys() == got.keys():
        same = True
        parts = [(key, expected[key], got[key]) for key in expected if exact_labels or key != "label"]
    elif _is_candidate_list(expected) and _is_candidate_list(got) and len(expected) == len(got):
        same = True
        for rank, (mine, other) in enumerate(zip(expected, got, strict=True)):
            swapped = mine["token"] != other["token"] and _swap_is_a_tie(expected, got, rank)
            # A swapped candidate's token and strings follow it: its score must still match.
            parts.append(
                (f"[{rank}]", mine["score"] if swapped else mine, other["score"] if swapped else other)
            )
    elif isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        same = True
        parts = [(f"[{i}]", mine, other) for i, (mine, other) in enumerate(zip(expected, got, strict=True))]
    else:
        same = expected == got
    if not same:
        return f"{expected!r} vs {got!r}"
    for where, mine, other in parts:
        inner = answers_differ(mine, other, exact_labels)
        if inner:
            return f"{where} {inner}"
    return None


def _check_outputs(
    eager: TextPredictor, compiled: TextPredictor, encoded: Sequence[Sequence[int]], report: ParityReport
) -> bool:
    """The graph's raw output on the mixed-length batch, at real (not padding) positions;
    False if it has another shape (nothing else can be compared)."""
    input_ids, attention = eager.pad(encoded)
    reference = eager.forward(input_ids, attention).float().cpu()
    output = compiled.forward(input_ids, attention).float().cpu()
    if reference.shape != output.shape:
        report.broken.append(f"output shape {tuple(output.shape)} instead of {tuple(reference.shape)}")
        return False
    real = attention.bool() if reference.dim() == 3 else torch.ones(reference.shape[0], dtype=torch.bool)
    if not bool(output[real].isfinite().all()):
        report.broken.append("the output holds NaN or infinity")
        return False
    report.output_max_abs_diff = float((reference - output)[real].abs().max())
    report.output_bound = OUTPUT_TOLERANCE * max(1.0, float(reference[real].abs().max()))
    if not report.output_max_abs_diff <= report.output_bound:  # a NaN difference fails too
        report.problems.append(f"output differs by {report.output_max_abs_diff:.2e}")
    return True


def _check_scores(
    eager: TextPredictor, compiled: TextPredictor, encoded: Sequence[Sequence[int]], report: ParityReport
) -> list[bool]:
    """Each probe alone: its scores and ranking; whether a near-tie swapped any of its candidates."""
    tied: list[bool] = []
    for ids in encoded:
        before = report.near_tie_swaps
        expected, got = eager.distributions([ids]), compiled.distributions([ids])
        report.score_max_abs_diff = max(report.score_max_abs_diff, float((expected - got).abs().max()))
        _ranking_swaps(expected, got, report)
        tied.append(report.near_tie_swaps > before)
    if not math.isfinite(report.score_max_abs_diff):
        report.broken.append("a score is NaN or infinite")
    elif not report.score_max_abs_diff <= SCORE_TOLERANCE:
        report.problems.append(f"scores differ by {report.score_max_abs_diff:.2e}")
    return tied


def check_parity(
    eager: TextPredictor, compiled: TextPredictor, texts: Sequence[str], report: ParityReport
) -> None:
    """Run the gate (module docstring); problems go into the report."""
    encoded = encode(eager, texts)
    report.probes = len(texts)
    report.longest_probe_tokens = max(len(ids) for ids in encoded)
    if not _check_outputs(eager, compiled, encoded, report):
        return
    tied = _check_scores(eager, compiled, encoded, report)
    requests = [eager.parse({"text": text}) for text in texts]
    answers = zip(eager.predict(requests), compiled.predict(requests), strict=True)
    for index, (mine, other) in enumerate(answers):
        where = answers_differ(mine, other, exact_labels=not tied[index])
        if where:
            report.problems.append(f"probe {index} answers differently: {where[:200]}")


def export(task: ExportTask, archive_dir: Path, settings: TextModelSettings) -> ParityReport:
    """Export, load both predictors, gate; the report says whether the compiled one may serve."""
    report = ParityReport(task=task.name, quantize=settings.quantize)
    eager = task.load(
        ModelFiles(archive_dir, settings.model_copy(update={"backend": "torch", "quantize": "none"}))
    )
    texts = probe_texts(eager, task)
    encoded = encode(eager, texts)
    calibration = (
        [[tensor.numpy() for tensor in eager.pad([ids])] for ids in encode(eager, CALIBRATION)]
        if settings.quantize == "int8"
        else None
    )
    started = time.perf_counter()
    target = archive_dir / COMPILED_SUBDIR / OPENVINO_FILE
    if not isinstance(eager.forward, TorchForward):
        raise TypeError("the reference backend must be PyTorch eager")
    example = eager.pad(encoded[:2])
    convert(eager.forward.graph, example, target, calibration)
    convert_head(eager, example, target.with_name(OPENVINO_HEAD_FILE))
    report.export_s = round(time.perf_counter() - started, 2)
    compiled = task.load(ModelFiles(archive_dir, settings.model_copy(update={"backend": "openvino"})))
    check_parity(eager, compiled, texts, report)
    (archive_dir / COMPILED_SUBDIR / PARITY_REPORT).write_text(
        json.dumps(report.as_json(), indent=2), encoding="utf-8"
    )
    return report
