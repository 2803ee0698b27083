"""Per-block divergence: where a candidate's image graph departs from the fp32 reference, and which blocks put the
error there. Blocks and their tensors are the model's own (`model/blocks.py`).

Two runs of the candidate on the same windows as the reference, every block's input and output exposed:
- free-running, as deployed: each block output is compared with the reference's — cosine (mean over tokens of each
  token vector's cosine), SQNR in dB (the reference's power over the power of the difference, whole tensor), the
  largest absolute difference. The *first departure* is the first block, in forward order, whose SQNR falls below
  the tolerance (30 dB unless told otherwise). Why 30: the default drift budget asks a mean group-embedding cosine
  ≥ 0.995, and for unit vectors 1 − cos = ‖a − b‖²/2, i.e. a noise-to-signal ratio of 1 % (20 dB) at the group
  embeddings; a block output at 30 dB has spent a tenth of that before the rest of the network adds to it.
- teacher-forced: every block reads the *reference's* input instead of its own, so its output error is the
  error it makes itself — its *own* noise. The free-running stream cannot say that: GroupViT's grouping blocks
  assign tokens to groups by argmax, so noise arriving from upstream flips assignments and grows several-fold
  inside a grouping block that computes exactly (measured: noise injected into stage1.layer1.mlp grows 12 dB
  across stage1.grouping). A block's *share* is its own noise-to-signal ratio over the sum for all blocks — noise
  powers add — and `suggest` turns the shares into the `--keep-float` list the INT8 export accepts.

Exposing tensors is each backend's business (Polygraphy's "mark outputs"): ONNX Runtime runs copies of the image
graph with extra graph outputs (and, teacher-forced, extra graph inputs); OpenVINO adds Results and Parameters to
the IR and compiles it for a batch of one at the precision its runtime would choose; TensorRT builds engines from
the ONNX the artifact's engine was built from, with the same plan and the block tensors marked as outputs. An
exposed tensor can keep a backend from fusing across it, so figures can differ slightly from an unexposed run;
the last row (projection) can be checked against `drift`'s group-embedding cosine.
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Protocol, cast

import numpy as np

from ..artifact import Manifest
from ..artifact_records import OutlierNote
from ..errors import UserError
from ..files import write_json_atomic, write_text_atomic
from ..model.blocks import BlockTensors, block_tensors, forward_order, is_block_name
from ..options import check_number
from ..progress import progress_bar
from ..runtimes import backend_module, backend_options, choose_backend, is_artifact
from ..runtimes.probes import IMAGE_INPUT, image_graph
from ..segmentation.preprocess import list_images, load_image, prepare
from .html_report import CHART_CHAR_PX, CHART_FONT_PX, CHART_ROW_PX

SCHEMA = "groupvit-edge/blocks/1"
TOLERANCE_DB = 30.0
# A float32 tensor is no more faithful than its 24-bit significand: identical tensors report this, not infinity.
FLOAT32_SQNR_DB = 20 * math.log10(2 ** 24)
SUGGEST_SHARE = 0.5          # keep float the fewest blocks that make at least half of the noise …
SUGGEST_MOST = 4             # … but no more than this many: every float block costs INT8 speed


# ------------------------------------------------------------------------------------------------ figures

@dataclass
class _Accumulated:
    """Sums over windows for one tensor, in float64."""
    signal: float = 0.0          # Σ reference²
    noise: float = 0.0           # Σ (candidate − reference)²
    cosine_sum: float = 0.0
    cosine_min: float = 1.0
    rows: int = 0
    max_abs: float = 0.0

    def add(self, reference: np.ndarray, candidate: np.ndarray, name: str) -> None:
        if reference.shape != candidate.shape:
            raise RuntimeError(f"{name} has shape {reference.shape} in the reference and {candidate.shape} in the "
                               f"candidate")
        reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
        difference = candidate - reference
        self.signal += float(np.square(reference).sum())
        self.noise += float(np.square(difference).sum())
        self.max_abs = max(self.max_abs, float(np.abs(difference).max(initial=0.0)))
        cosines = _row_cosines(reference.reshape(-1, reference.shape[-1]), candidate.reshape(-1, candidate.shape[-1]))
        self.cosine_sum += float(cosines.sum())
        self.cosine_min = min(self.cosine_min, float(cosines.min(initial=1.0)))
        self.rows += cosines.size

    @property
    def noise_ratio(self) -> float:
        return self.noise / self.signal if self.signal > 0 else 0.0


def _row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return (reference * candidate).sum(axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)


def sqnr_db(noise_ratio: float) -> float:
    """Signal-to-noise of a noise-to-signal power ratio, in dB, capped at what float32 can resolve."""
    return FLOAT32_SQNR_DB if noise_ratio <= 0 else min(-10 * math.log10(noise_ratio), FLOAT32_SQNR_DB)


@dataclass(frozen=True)
class BlockFigures:
    """One block's output compared with the reference's over every window; noise ratios are linear powers,
    ‖candidate − reference‖² / ‖reference‖²."""
    block: str
    cosine: float                  # free-running: mean over tokens (vectors of the last axis) of every window
    cosine_min: float              # free-running: the worst token of any window
    sqnr_db: float                 # free-running, whole tensor, capped at FLOAT32_SQNR_DB
    max_abs: float                 # free-running
    noise_ratio: float             # free-running
    own_sqnr_db: float | None      # teacher-forced (the block reads the reference's input); None: not measured
    own_noise_ratio: float | None
    share: float | None            # percent of the own noise of all blocks

    @property
    def identical(self) -> bool:
        return self.noise_ratio == 0.0


def _figures(blocks: list[BlockTensors], free: dict[str, _Accumulated], forced: dict[str, _Accumulated]
             ) -> list[BlockFigures]:
    own = {block.block: forced[block.output].noise_ratio for block in blocks if block.output in forced}
    total = sum(own.values())
    found = []
    for block in blocks:
        sums, mine = free[block.output], own.get(block.block)
        share = None if mine is None else (100.0 * mine / total if total > 0 else 0.0)
        found.append(BlockFigures(block.block, sums.cosine_sum / max(sums.rows, 1), sums.cosine_min,
                                  sqnr_db(sums.noise_ratio), sums.max_abs, sums.noise_ratio,
                                  None if mine is None else sqnr_db(mine), mine, share))
    return found


# ------------------------------------------------------------------------------------------------- report

@dataclass(frozen=True)
class BlockReport:
    """Per-block divergence of a candidate from a reference; blocks in forward order."""
    reference: str                       # what ran: graph, backend, device, precision
    candidate: str
    photos: int
    windows: int
    size: tuple[int, int]
    tolerance_db: float
    blocks: tuple[BlockFigures, ...]
    unexposed: tuple[str, ...] = ()      # blocks whose output tensor one of the two graphs does not have
    float_blocks: tuple[str, ...] = ()   # blocks the candidate already computes in float (its manifest)
    outliers: tuple[OutlierNote, ...] = ()   # readers its export found activation outliers in (its manifest)

    @property
    def first_departure(self) -> BlockFigures | None:
        """The first block whose free-running output falls below the tolerance; None when none does."""
        return next((figures for figures in self.blocks if figures.sqnr_db < self.tolerance_db), None)

    def ranking(self) -> list[BlockFigures]:
        """Blocks by their own noise, most first (blocks not measured teacher-forced last)."""
        return sorted(self.blocks, key=lambda figures: -(figures.own_noise_ratio or 0.0))

    def suggest(self, share: float = SUGGEST_SHARE, most: int = SUGGEST_MOST) -> list[str]:
        """The `--keep-float` list for the next INT8 export: the blocks the candidate already keeps float, plus —
        when a block leaves tolerance — the fewest blocks, most own noise first, that together make at least
        `share` of it (at most `most`). Within tolerance nothing is added: that noise is not worth INT8 speed."""
        check_number("suggest share", share, minimum=0.0, maximum=1.0)
        check_number("suggest most", most, minimum=1)
        picked: list[str] = []
        covered = 0.0
        for figures in self.ranking() if self.first_departure is not None else []:
            if len(picked) >= most or covered >= 100.0 * share:
                break
            if figures.block in self.float_blocks or not figures.own_noise_ratio:
                continue
            picked.append(figures.block)
            covered += figures.share or 0.0
        return forward_order(set(self.float_blocks) | set(picked))

    def to_dict(self) -> dict:
        first = self.first_departure
        return {"schema": SCHEMA, "reference": self.reference, "candidate": self.candidate,
                "images": {"count": self.photos, "windows": self.windows, "size": list(self.size)},
                "tolerance_db": self.tolerance_db, "first_departure": first.block if first else None,
                "ranking": [figures.block for figures in self.ranking() if figures.own_noise_ratio],
                "suggested_keep_float": self.suggest(), "float_blocks": list(self.float_blocks),
                "unexposed": list(self.unexposed),
                "outlier_readers": [dataclasses.asdict(note) for note in self.outliers],
                "blocks": [dataclasses.asdict(f) for f in self.blocks]}

    def to_markdown(self) -> str:
        first = self.first_departure
        top = [figures for figures in self.ranking() if figures.own_noise_ratio][:3]
        lines = [f"Per-block divergence of {self.candidate} from {self.reference}: {self.windows} windows of "
                 f"{self.photos} photos at {self.size[0]}x{self.size[1]}.", "",
                 f"- first block below {self.tolerance_db:g} dB SQNR: " +
                 (f"**{first.block}** (SQNR {first.sqnr_db:.1f} dB, cosine {first.cosine:.5f})" if first
                  else "none — every block output stays within tolerance"),
                 "- most own noise (each block reading the reference's input): " +
                 (", ".join(f"{f.block} ({f.share:.1f} %)" for f in top) or "none"),
                 f"- keep float (`--keep-float`): {','.join(self.suggest()) or 'nothing to suggest'}",
                 *self._outlier_lines(), "",
                 "| block | cosine | SQNR (dB) | max abs | own SQNR (dB) | share of own noise |",
                 "|---|---:|---:|---:|---:|---:|"]
        for figures in self.blocks:
            marker = f" ◀ first below {self.tolerance_db:g} dB" if first is not None and figures is first else ""
            own = "—" if figures.own_noise_ratio is None else _decibels(figures.own_noise_ratio)
            share = "—" if figures.share is None else f"{figures.share:.1f} %"
            lines.append(f"| {figures.block}{marker} | {figures.cosine:.5f} | {_decibels(figures.noise_ratio)} | "
                         f"{figures.max_abs:.2e} | {own} | {share} |")
        if self.unexposed:
            lines += ["", f"Not compared (a graph lacks their tensors): {', '.join(self.unexposed)}."]
        return "\n".join(lines)

    def _outlier_lines(self) -> list[str]:
        if not self.outliers:
            return []
        shown = [f"  - {note.describe()}" for note in self.outliers[:8]]
        more = [f"  - … and {len(self.outliers) - 8} more (manifest precision.outlier_readers)"] \
            if len(self.outliers) > 8 else []
        return [f"- activation outliers the export found in {len(self.outliers)} INT8 reader(s):", *shown, *more]

    def chart_svg(self) -> str:
        return divergence_chart_svg(self)

    def write(self, directory) -> list[Path]:
        """blocks.json, blocks.md and blocks.svg in `directory`, each written atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return [write_json_atomic(directory / "blocks.json", self.to_dict()),
                write_text_atomic(directory / "blocks.md", self.to_markdown() + "\n"),
                write_text_atomic(directory / "blocks.svg", self.chart_svg())]


def _decibels(noise_ratio: float) -> str:
    return "identical" if noise_ratio == 0.0 else f"{sqnr_db(noise_ratio):.1f}"


# ---------------------------------------------------------------------------------------------------- chart

def divergence_chart_svg(report: BlockReport) -> str:
    """One row per block in forward order: free-running SQNR at its output (red below the tolerance, dashed line
    at it) and its share of the blocks' own noise."""
    label_px = int(max(len(f.block) for f in report.blocks) * CHART_CHAR_PX) + 12
    sqnr_px, share_px, gap_px, top, axis_px = 360, 200, 90, 34, 48
    finite = [f.sqnr_db for f in report.blocks if not f.identical]
    ceiling = max(60.0, 10.0 * math.ceil(max(finite + [report.tolerance_db]) / 10.0))
    share_left = label_px + sqnr_px + gap_px
    bottom = top + CHART_ROW_PX * len(report.blocks)
    width, height = share_left + share_px + 50, bottom + axis_px

    def sqnr_x(value: float) -> float:
        return label_px + sqnr_px * min(value, ceiling) / ceiling

    def share_x(value: float) -> float:
        return share_left + share_px * value / 100.0

    parts = [f'<text x="{label_px}" y="20" font-weight="bold">SQNR at block output (dB)</text>',
             f'<text x="{share_left}" y="20" font-weight="bold">share of own noise (%)</text>']
    for tick in range(0, int(ceiling) + 1, 20 if ceiling > 80 else 10):
        parts.append(f'<text x="{sqnr_x(tick):.1f}" y="{bottom + 18}" text-anchor="middle">{tick}</text>')
    for tick in (0, 50, 100):
        parts.append(f'<text x="{share_x(tick):.1f}" y="{bottom + 18}" text-anchor="middle">{tick}</text>')
    first = report.first_departure
    for row, figures in enumerate(report.blocks):
        parts.append(_chart_row(figures, top + CHART_ROW_PX * row, label_px, share_left, sqnr_x, share_x,
                                figures is first, figures.sqnr_db < report.tolerance_db))
    tolerance = sqnr_x(report.tolerance_db)
    parts.append(f'<line x1="{tolerance:.1f}" y1="{top - 4}" x2="{tolerance:.1f}" y2="{bottom}" stroke="#333" '
                 f'stroke-dasharray="4 3"/><text x="{tolerance:.1f}" y="{bottom + 38}" text-anchor="middle">'
                 f"tolerance {report.tolerance_db:g} dB</text>")
    for left in (label_px, share_left):
        parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>')
    title = f"Per-block divergence of {report.candidate} from {report.reference}"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="system-ui, DejaVu Sans, sans-serif" '
            f'font-size="{CHART_FONT_PX}" role="img" aria-label="{escape(title)}">'
            f"<title>{escape(title)}</title>{''.join(parts)}</svg>")


def _chart_row(figures: BlockFigures, y: int, label_px: int, share_left: int, sqnr_x, share_x, first: bool,
               departed: bool) -> str:
    baseline = y + CHART_ROW_PX / 2 + CHART_FONT_PX * 0.35
    bar = f'y="{y + 4}" height="{CHART_ROW_PX - 8}"'
    weight = ' font-weight="bold"' if first else ""
    parts = [f'<g class="row"><text x="{label_px - 8}" y="{baseline:.1f}" text-anchor="end"{weight}>'
             f"{escape(figures.block)}</text>",
             f'<rect x="{label_px}" {bar} width="{sqnr_x(figures.sqnr_db) - label_px:.1f}" '
             f'fill="{"#c0392b" if departed else "#4a78b5"}"/>',
             f'<text x="{sqnr_x(figures.sqnr_db) + 4:.1f}" y="{baseline:.1f}">{_decibels(figures.noise_ratio)}</text>']
    if figures.share is not None:
        parts += [f'<rect x="{share_left}" {bar} width="{share_x(figures.share) - share_left:.1f}" fill="#e08a2c"/>',
                  f'<text x="{share_x(figures.share) + 4:.1f}" y="{baseline:.1f}">{figures.share:.1f}</text>']
    return "".join(parts) + "</g>"


# ---------------------------------------------------------------------------------------------- measuring

def per_block_divergence(reference, candidate, images=None, *, backend: str | None = None,
                         reference_backend: str = "onnxruntime", tolerance_db: float = TOLERANCE_DB,
                         progress: bool = False, **options) -> BlockReport:
    """Compare `candidate` with `reference` block by block on the windows of `images` (files or directories;
    None: the sample photos shipped with groupvit-edge).

    Both are artifact directories. The reference runs on `reference_backend` (ONNX Runtime: what every export
    measures against); the candidate on `backend`, or the best backend installed for it, with that backend's
    runtime `options` (e.g. device="GPU" for OpenVINO).
    """
    check_number("--tolerance-db", tolerance_db, minimum=0.0, maximum=FLOAT32_SQNR_DB)
    reference_name, reference_manifest = _backend_for(reference, reference_backend, "--ref")
    candidate_name, candidate_manifest = _backend_for(candidate, backend, "--candidate")
    _check_comparable(reference, candidate, reference_manifest, candidate_manifest)
    blocks = block_tensors(image_graph(reference_manifest).graph)
    if not blocks:
        raise UserError(f"the image graph of {reference} has none of GroupViT's blocks: pass an artifact exported by "
                        f"groupvit-edge")
    outputs = sorted({tensor for block in blocks for tensor in (block.input, block.output)} - {IMAGE_INPUT})
    inputs = sorted({block.input for block in blocks} - {IMAGE_INPUT})
    paths = list_images(images)
    preprocess = reference_manifest.preprocess
    with ExitStack() as stack:
        reference_probe = stack.enter_context(_prober(reference_name).block_probe(
            reference_manifest, outputs, (), backend_options(reference_name, {})))
        forced = [tensor for tensor in inputs if tensor not in reference_probe.missing]
        candidate_probe = stack.enter_context(_prober(candidate_name).block_probe(
            candidate_manifest, outputs, forced, backend_options(candidate_name, options)))
        measured = [tensor for tensor in outputs if tensor not in reference_probe.missing + candidate_probe.missing]
        windows = (window for path in progress_bar(paths, progress, "per block")
                   for window in prepare(load_image(path), preprocess).windows)
        free, teacher_forced, count = _compare(reference_probe, candidate_probe, windows, measured)
        described = (reference_probe.description, candidate_probe.description)
    compared = [block for block in blocks if block.output in measured]
    return BlockReport(described[0], described[1], len(paths), count, (preprocess.height, preprocess.width),
                       float(tolerance_db), tuple(_figures(compared, free, teacher_forced)),
                       tuple(block.block for block in blocks if block.output not in measured),
                       tuple(_float_blocks(candidate_manifest)), candidate_manifest.precision.outliers)


def _compare(reference_probe, candidate_probe, windows, tensors) -> tuple[dict, dict, int]:
    """Sums of the candidate's free-running and teacher-forced tensors against the reference's, and the count of
    windows; one window at a time, so memory stays that of one window's block tensors."""
    free: dict[str, _Accumulated] = {}
    teacher_forced: dict[str, _Accumulated] = {}
    count = 0
    for window in windows:
        expected = reference_probe.run(window)
        _accumulate(free, expected, candidate_probe.run(window), tensors)
        _accumulate(teacher_forced, expected, candidate_probe.run(window, expected), tensors)
        count += 1
    return free, teacher_forced, count


def _accumulate(sums: dict[str, _Accumulated], expected: dict, found: dict, tensors) -> None:
    for tensor in tensors:
        sums.setdefault(tensor, _Accumulated()).add(expected[tensor], found[tensor], tensor)


def _backend_for(source, backend: str | None, flag: str) -> tuple[str, Manifest]:
    if not is_artifact(source):
        raise UserError(f"{flag} {source} is not an artifact: per-block divergence compares two artifacts' graphs, "
                        f"so export the fp32 reference first (groupvit-edge export --model {source} --target onnx "
                        f"--out DIR) and pass DIR")
    name, manifest = choose_backend(source, backend)
    if not hasattr(backend_module(name), "block_probe"):
        raise UserError(f"per-block divergence cannot expose the blocks of a {name} run: choose --backend "
                        f"onnxruntime, openvino or tensorrt")
    return name, cast(Manifest, manifest)      # an artifact's: choose_backend returns its manifest


class _ProbingBackend(Protocol):
    """A backend module that can expose block tensors (ONNX Runtime, OpenVINO, TensorRT)."""
    def block_probe(self, manifest: Manifest, outputs, inputs, options) -> AbstractContextManager: ...


def _prober(name: str) -> _ProbingBackend:
    return cast(_ProbingBackend, backend_module(name))    # _backend_for checked that it has block_probe


def _check_comparable(reference, candidate, reference_manifest: Manifest, candidate_manifest: Manifest) -> None:
    ours, theirs = reference_manifest.preprocess, candidate_manifest.preprocess
    if (ours.height, ours.width) != (theirs.height, theirs.width):
        raise UserError(f"{candidate} was exported at {theirs.height}x{theirs.width} but {reference} at "
                        f"{ours.height}x{ours.width}: compare artifacts of the same size")
    weights = [m.model.weights_sha256 for m in (reference_manifest, candidate_manifest)]
    if weights[0] != weights[1]:
        raise UserError(f"{candidate} and {reference} were exported from different weights: compare a candidate "
                        f"with the fp32 artifact of its own checkpoint")


def _float_blocks(manifest: Manifest) -> list[str]:
    return [name for name in manifest.precision.kept_float if is_block_name(name)]
