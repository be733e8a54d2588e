"""Score new images with a trained category model: verdicts, heatmap overlays and a JSONL file.

Command line (run from the repository root)::

    python -m anomaly_spotter.deploy.predict --category weave photos/ extra/img_0042.png
    python -m anomaly_spotter.deploy.predict --category weave --rev exp-1a2b3 photos/   # an experiment's model
    python -m anomaly_spotter.deploy.predict --category weave --rev v1.0 --out /tmp/pred photos/

Without ``--rev`` the workspace's ``models/<category>/model.pt`` and ``thresholds.json`` and
``params.yaml`` are used. With ``--rev`` (a branch, tag, commit or ``dvc exp`` name) all three
are read as they were at that revision through DVC's Python API, so the model, its threshold
and the ``score`` params it was thresholded with always belong together.

Like the ``evaluate`` stage, predict refuses a ``thresholds.json`` that records other score
params than ``params.yaml``'s ``score`` (with this model) gives, or none (an old file): a
threshold means nothing for scores computed another way, and scoring silently with the
recorded params instead would ignore ``params.yaml``. The error names the differing keys and
says to run ``dvc repro thresholds@<category>``.

Every image is resized to the model's input size exactly as the ``preprocess`` stage does
(:func:`anomaly_spotter.dataset.images.resize`) and scored by :func:`anomaly_spotter.scoring.score_images`,
like the ``thresholds`` and ``evaluate`` stages; it is anomalous when ``score >= threshold``.
Written into ``--out`` (default ``predictions/<category>/``):

* one heatmap overlay PNG per image, at the image's original size (a folder argument's
  sub-folders are kept, so ``test/crack/000.png`` and ``test/good/000.png`` do not collide);
* ``predictions.jsonl``: one JSON object per image (``file``, ``score``, ``threshold``,
  ``anomalous``, ``heatmap``), and one with an ``error`` for each file that could not be read;
* with ``--maps``, also each raw anomaly map at the image's original size as a float32 TIFF
  (``<name>.tiff``, named in the JSONL as ``map``): what a benchmark server scores, e.g. MVTec
  AD 2's private test splits, which have no ground truth and are never evaluated here.

Unreadable files (empty, truncated, not an image) are reported on stderr and skipped. The exit
status is 0 when at least one image was scored, 2 otherwise or on any error the user can fix.

Library use:
    >>> detector = load_detector("weave")  # doctest: +SKIP
    >>> results = predict_images(detector, collect_images(["photos/"]), Path("predictions/weave"))  # doctest: +SKIP
    >>> [(r.file, r.anomalous) for r in results]  # doctest: +SKIP
    [('photos/a.png', False), ('photos/b.png', True)]
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from anomaly_spotter.cli import run, stage_parser
from anomaly_spotter.config import ScoreConfig, load_params, parse_params
from anomaly_spotter.dataset.images import IMAGE_SUFFIXES, encode_float_tiff, encode_png, read_image, resize
from anomaly_spotter.detectors import Detector, load_model
from anomaly_spotter.detectors.anomaly_map import resize_to
from anomaly_spotter.errors import ConfigError, DataError, UserError
from anomaly_spotter.evaluation.thresholds import Thresholds, parse_thresholds, read_thresholds, score_record
from anomaly_spotter.fileio import write_bytes, write_text
from anomaly_spotter.runtime import select_device
from anomaly_spotter.scoring import score_images

RESULTS_NAME = "predictions.jsonl"
# More images than this get a progress bar (on a terminal only); fewer finish before it matters.
PROGRESS_MIN_IMAGES = 8
HEATMAP_ALPHA = 0.45  # weight of the colour map over the image, as in the evaluate stage's plots


def model_path(category: str) -> str:
    return f"models/{category}/model.pt"


def thresholds_path(category: str) -> str:
    return f"models/{category}/thresholds.json"


@dataclass(frozen=True)
class ThresholdedDetector:
    """A category's model with the threshold and ``score`` params that belong to it."""

    category: str
    model: Detector  # any model.kind
    threshold: float
    strategy: str  # the thresholds.json strategy the threshold came from
    score: ScoreConfig
    source: str  # "workspace" or "revision <rev>", for messages
    normal_score_min: float | None = None  # lowest normal validation score (heatmap colour scale)

    @property
    def image_size(self) -> int:
        return self.model.image_size


@dataclass(frozen=True)
class Prediction:
    """The result for one input file; ``error`` is set (and the rest ``None``) when it was unreadable."""

    file: str
    score: float | None = None
    threshold: float | None = None
    anomalous: bool | None = None
    heatmap: str | None = None
    error: str | None = None
    map: str | None = None  # the float32 TIFF anomaly map, with --maps only

    def to_json(self) -> dict[str, Any]:
        """The ``predictions.jsonl`` object: the image's fields, or ``file`` and ``error``."""
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        row = {
            "file": self.file,
            "score": self.score,
            "threshold": self.threshold,
            "anomalous": self.anomalous,
            "heatmap": self.heatmap,
        }
        return row if self.map is None else {**row, "map": self.map}


@dataclass(frozen=True)
class InputImage:
    """An image file to score and the heatmap name (relative, without suffix) it gets."""

    path: Path
    name: str


# -- loading the model, threshold and params ----------------------------------------------------


def _read_at_rev(path: str, rev: str, repo: str | None) -> bytes:
    """Bytes of a git- or DVC-tracked ``path`` (repository-relative) at ``rev``."""
    import dvc.api  # deferred: importing DVC takes a while and only --rev needs it
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    try:
        with dvc.api.open(path, repo=repo, rev=rev, mode="rb") as handle:
            return handle.read()
    except (DvcException, SCMError, FileNotFoundError) as exc:
        raise UserError(
            f"cannot read {path} at revision {rev!r}: {exc}. Check the name with `git log` or `dvc exp show`; "
            f"if the file is there but not in the DVC cache, run `dvc pull` (or `dvc fetch --all-commits`, "
            f"`dvc exp pull <remote> {rev}`), or `dvc repro` at that revision to create it"
        ) from exc


def load_detector(
    category: str,
    *,
    rev: str | None = None,
    params_path: str = "params.yaml",
    repo: str | None = None,
    device: str = "auto",
) -> ThresholdedDetector:
    """Load ``category``'s model, threshold and ``score`` params from the workspace or a revision.

    ``repo`` is the repository root (default: the current folder, as for every stage); the
    model and thresholds paths and ``params_path`` are relative to it.

    >>> detector = load_detector("weave", rev="HEAD~1")  # doctest: +SKIP
    >>> detector.threshold, detector.score.map  # doctest: +SKIP
    (0.8674137771, 'ssim')
    """
    root = Path(repo or ".")
    torch_device = select_device(device)
    if rev is None:
        params = load_params(root / params_path, category)
        model, _ = load_model(root / model_path(category), torch_device)  # says `dvc repro`/`dvc pull` when missing
        thresholds: Thresholds = read_thresholds(root / thresholds_path(category), category=category)
        source = "workspace"
    else:
        try:
            raw = yaml.safe_load(_read_at_rev(params_path, rev, repo))
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], f"{params_path}@{rev}") from exc
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(["the top level must be a mapping of sections"], f"{params_path}@{rev}")
        params = parse_params(raw, category, f"{params_path}@{rev}")
        model_bytes = _read_at_rev(model_path(category), rev, repo)
        # load_model reads a file: hand it the revision's bytes in a private temporary one.
        with tempfile.TemporaryDirectory(prefix="anomaly-spotter-") as tmp:
            tmp_model = Path(tmp) / "model.pt"
            tmp_model.write_bytes(model_bytes)
            model, _ = load_model(tmp_model, torch_device)
        thresholds = parse_thresholds(
            _read_at_rev(thresholds_path(category), rev, repo), f"{thresholds_path(category)}@{rev}", category=category
        )
        source = f"revision {rev}"
    thresholds.require_score(score_record(params.score, model), category=category, user="predict")
    return ThresholdedDetector(
        category, model, thresholds.threshold, thresholds.strategy, params.score, source, thresholds.normal_score_min
    )


# -- inputs -------------------------------------------------------------------------------------


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... when an earlier input already took it."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate)
    return candidate


def collect_images(
    paths: Sequence[str | os.PathLike[str]], *, exclude: str | os.PathLike[str] | None = None
) -> list[InputImage]:
    """The image files named by ``paths``: files as given, folders searched recursively.

    Folders contribute files with a suffix in :data:`images.IMAGE_SUFFIXES` (any case), sorted;
    hidden files and folders are skipped. A file named explicitly is taken whatever its suffix
    (if it is not an image, scoring reports it). Each file is listed once. Files inside the
    ``exclude`` folder (the output folder: earlier heatmaps are not inputs) are left out. Paths
    that do not exist are a :class:`UserError` listing all of them.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for rel in ("good/000.png", "crack/000.PNG", "notes.txt"):
    ...     (d / rel).parent.mkdir(exist_ok=True); _ = (d / rel).write_bytes(b"")
    >>> [(i.path.relative_to(d).as_posix(), i.name) for i in collect_images([d])]  # doctest: +ELLIPSIS
    [('crack/000.PNG', '.../crack/000'), ('good/000.png', '.../good/000')]
    """
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise UserError(f"{len(missing)} input path(s) do not exist: {', '.join(missing)}")
    found: list[InputImage] = []
    seen: set[Path] = set()
    excluded = Path(exclude).resolve() if exclude is not None else None
    used_names: set[str] = set()

    def add(path: Path, name: str) -> None:
        key = path.resolve()
        if excluded is not None and (key == excluded or excluded in key.parents):
            return
        if key not in seen:
            seen.add(key)
            found.append(InputImage(path, _unique(name, used_names)))

    for arg in map(Path, paths):
        if arg.is_dir():
            label = arg.resolve().name or "root"
            files = sorted(
                p
                for p in arg.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(arg).parts)
            )
            for path in files:
                add(path, (Path(label) / path.relative_to(arg).with_suffix("")).as_posix())
        else:
            add(arg, arg.stem)
    if not found:
        raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(map(str, paths))}")
    return found


# -- scoring and heatmaps -----------------------------------------------------------------------


def heatmap_overlay(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """uint8 RGB ``image`` (H, W, 3) with the model-resolution ``amap`` blended over it as a jet map.

    The map is upsampled to (H, W) with :func:`anomaly_map.resize_to`; ``vmin`` and below is
    blue, ``vmax`` and above red.

    >>> out = heatmap_overlay(np.zeros((6, 8, 3), np.uint8), np.ones((4, 4), np.float32), 0.0, 1.0)
    >>> out.shape, out.dtype, out[0, 0].tolist()  # 45 % of jet's dark red over black
    ((6, 8, 3), dtype('uint8'), [58, 0, 0])
    """
    height, width = image.shape[:2]
    full = resize_to(amap, (height, width))
    levels = np.clip(np.rint((full - vmin) / (vmax - vmin) * 255.0), 0, 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = (1.0 - HEATMAP_ALPHA) * image.astype(np.float32) + HEATMAP_ALPHA * colour.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def colour_range(threshold: float, normal_score_min: float | None) -> tuple[float, float]:
    """The heatmap colour scale (vmin, vmax): fixed per detector, with the threshold mid-scale.

    ``vmin`` is the lowest normal validation score (``thresholds.json``), so the bulk of a
    normal image is blue, its highest pixels reach green-yellow near the threshold, and only
    clearly anomalous pixels turn red. (Anomaly maps have a large baseline, e.g. about 0.8 for
    SSIM maps of textures, so a scale from 0 would show every image in the same flat colour.)
    A fixed scale, rather than one per image, keeps the colours of different images comparable:
    a normal image is never stretched to full red. Without the statistic, the scale starts at 0.

    >>> colour_range(0.5, 0.3), colour_range(0.4, None)
    ((0.3, 0.7), (0.0, 0.8))
    """
    low = normal_score_min if normal_score_min is not None and normal_score_min < threshold else 0.0
    high = 2.0 * threshold - low
    return (low, high) if high > low else (0.0, 1.0)


def _batches(items: Sequence[InputImage], size: int) -> Iterator[Sequence[InputImage]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_images(
    detector: ThresholdedDetector,
    inputs: Sequence[InputImage],
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int | None = None,
    progress: bool | None = None,
    maps: bool = False,
) -> list[Prediction]:
    """Score ``inputs`` in batches, write one heatmap PNG per image into ``out_dir``, return results.

    With ``maps`` each anomaly map is also written at the image's original size as a float32
    TIFF beside its heatmap.

    Results come in input order, one per input; unreadable files get a :class:`Prediction`
    with ``error`` set and a warning on stderr naming the file. ``batch_size`` defaults to
    ``score.batch_size``; ``progress`` None shows a bar for more than
    :data:`PROGRESS_MIN_IMAGES` images when stderr is a terminal.
    """
    out_dir = Path(out_dir)
    size = batch_size or detector.score.batch_size
    config = dataclasses.replace(detector.score, batch_size=size)
    vmin, vmax = colour_range(detector.threshold, detector.normal_score_min)
    if progress is None:  # tqdm's disable=None: a bar only when stderr is a terminal
        disable = None if len(inputs) > PROGRESS_MIN_IMAGES else True
    else:
        disable = not progress
    results: list[Prediction] = []
    with tqdm(
        total=len(inputs),
        desc=f"predict {detector.category}",
        unit="img",
        disable=disable,
        leave=False,
        file=sys.stderr,
    ) as bar:
        for batch in _batches(inputs, size):
            # Decode one batch at a time: memory stays bounded however many files are given.
            slots: list[Prediction | None] = [None] * len(batch)
            decoded: list[tuple[int, np.ndarray]] = []
            for index, item in enumerate(batch):
                try:
                    decoded.append((index, read_image(item.path)))
                except DataError as exc:
                    message = "; ".join(exc.problems)  # already names the file and what to do
                    tqdm.write(f"warning: skipped {message}", file=sys.stderr)
                    slots[index] = Prediction(file=batch[index].path.as_posix(), error=message)
            if decoded:
                resized = np.stack([resize(image, detector.image_size) for _, image in decoded])
                scored = score_images(detector.model, resized, config)
                for (index, image), amap, score in zip(decoded, scored.maps, scored.scores, strict=False):
                    item = batch[index]
                    heatmap = out_dir / f"{item.name}_heatmap.png"
                    write_bytes(heatmap, encode_png(heatmap_overlay(image, amap, vmin, vmax)))
                    map_file = out_dir / f"{item.name}.tiff" if maps else None
                    if map_file is not None:
                        write_bytes(map_file, encode_float_tiff(resize_to(amap, image.shape[:2])))
                    slots[index] = Prediction(
                        file=item.path.as_posix(),
                        score=float(score),
                        threshold=detector.threshold,
                        anomalous=bool(score >= detector.threshold),
                        heatmap=heatmap.as_posix(),
                        map=map_file.as_posix() if map_file is not None else None,
                    )
            results.extend(slot for slot in slots if slot is not None)
            bar.update(len(batch))
    return results


# -- output -------------------------------------------------------------------------------------


def write_predictions(results: Sequence[Prediction], path: str | os.PathLike[str]) -> None:
    """Write ``results`` as JSON Lines (sorted keys), atomically."""
    lines = [json.dumps(r.to_json(), sort_keys=True, allow_nan=False) for r in results]
    write_text(path, "".join(line + "\n" for line in lines))


def format_table(results: Sequence[Prediction]) -> str:
    """A plain-text table: file, score, threshold, verdict (``unreadable`` for skipped files).

    >>> print(format_table([Prediction("a.png", 0.91, 0.5, True, "h.png"), Prediction("b.png", error="b.png: empty")]))
    file   score  threshold  verdict
    a.png  0.91   0.5        ANOMALOUS
    b.png  -      -          unreadable
    """
    rows = [("file", "score", "threshold", "verdict")]
    for r in results:
        if r.error is not None:
            rows.append((r.file, "-", "-", "unreadable"))
        else:
            rows.append((r.file, f"{r.score:.6g}", f"{r.threshold:.6g}", "ANOMALOUS" if r.anomalous else "ok"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=False)), row[3]]) for row in rows
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point; see the module docstring."""
    parser = stage_parser("Score images with a trained category model; write heatmaps and predictions.jsonl.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders (searched recursively)")
    parser.add_argument("--out", help="output folder (default: predictions/<category>)")
    parser.add_argument(
        "--rev",
        help="git revision or experiment name to take the model, thresholds and params from (default: the workspace)",
    )
    parser.add_argument("--batch-size", type=int, help="images per batch (default: score.batch_size)")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model runs (default: auto)"
    )
    parser.add_argument(
        "--maps", action="store_true", help="also write each anomaly map at the image's size as a float32 TIFF"
    )
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    # Our warning names each unreadable file; OpenCV's own decoder warnings would only repeat it.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    out_dir = Path(args.out or f"predictions/{args.category}")
    inputs = collect_images(args.paths, exclude=out_dir)  # before loading the model: a typo fails fast
    detector = load_detector(args.category, rev=args.rev, params_path=args.params, device=args.device)
    results = predict_images(detector, inputs, out_dir, batch_size=args.batch_size, maps=args.maps)
    results_path = out_dir / RESULTS_NAME
    write_predictions(results, results_path)
    print(format_table(results))
    scored = [r for r in results if r.error is None]
    skipped = len(results) - len(scored)
    print(
        f"{len(scored)} image(s) scored with the {detector.source} model of {args.category} "
        f"(threshold {detector.threshold:.6g}, {detector.strategy}): {sum(bool(r.anomalous) for r in scored)} anomalous"
        f"{f', {skipped} unreadable skipped' if skipped else ''}; wrote {results_path} and the heatmaps beside it"
    )
    if not scored:
        raise UserError(
            f"none of the {len(results)} file(s) could be read as an image (see the warnings above); nothing was scored"
        )


if __name__ == "__main__":
    run(main)
