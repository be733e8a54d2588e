"""Checking and listing one category folder in MVTec AD layout.

The layout every source (synthetic, local folder, MVTec download) must produce::

    <category>/train/good/<name>.<ext>                      defect-free training images
    <category>/test/good/<name>.<ext>                       defect-free test images
    <category>/test/<defect>/<name>.<ext>                   defective test images
    <category>/ground_truth/<defect>/<name>_mask.<ext>      0 = good pixel, one value (255 or 1) = defect
    <category>/validation/good/<name>.<ext>                 optional: an official normal validation split

    <category>/regions/...                                  optional: MVTec LOCO AD's per-region masks (for sPRO)

When ``validation/good/`` is there (MVTec LOCO AD, MVTec 3D-AD and MVTec AD 2 publish one),
thresholds and model selection use it instead of a hold-out of ``train/good``. ``regions/`` is
not checked here: only :mod:`anomaly_spotter.dataset.regions` reads it.

``<ext>`` is any of :data:`anomaly_spotter.dataset.images.IMAGE_SUFFIXES` (case-insensitive). Masks are
read at their native bit depth by :func:`anomaly_spotter.dataset.images.read_mask_values` (8- or 16-bit
grayscale, RGB or palette: a pixel is defective when any channel is > 0). A defective image's
mask must mark at least one pixel: an all-zero mask would count its defect as normal pixels.
With ``masks="none"`` (``data.masks: none``: image labels only) there must be no ``ground_truth/``
at all; a set where only *some* defective images have masks is refused either way.

:func:`find_problems` reports *every* problem at once (a user fixing a 400-image folder should
not have to rerun the stage once per broken file). Each problem names the file or folder,
relative to the category folder, and says what to do.

Hidden files and folders (names starting with ``.``, e.g. ``.DS_Store`` or macOS ``._x.png``
resource forks) and the Windows files ``Thumbs.db`` / ``desktop.ini`` are ignored: operating
systems create them behind the user's back, so reporting them would only be noise. They are
never listed, so the folder import does not copy them either.

Example:
    >>> from pathlib import Path
    >>> find_problems(Path("/no/such/bottle"))
    ['/no/such/bottle: the category folder does not exist; check the path and the category name']
    >>> listing = list_category(Path("data/raw/bottle"))  # doctest: +SKIP
    >>> listing.train[0], listing.test[0].label, listing.test[0].mask  # doctest: +SKIP
    (PosixPath('data/raw/bottle/train/good/000.png'), 1,
     PosixPath('data/raw/bottle/ground_truth/broken_large/000_mask.png'))
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly_spotter.dataset.images import IMAGE_SUFFIXES, image_shape, read_mask_values
from anomaly_spotter.errors import DataError

GOOD = "good"
MASK_SUFFIX = "_mask"
TOP_LEVEL = ("train", "validation", "test", "ground_truth")
REGIONS = "regions"  # MVTec LOCO AD's per-region masks, read by anomaly_spotter.dataset.regions
# OS clutter that is skipped like dot-files (compared lower-case).
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})
# OpenCV releases the GIL while decoding, so a few threads keep both cores busy without
# oversubscribing a small machine.
CHECK_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class TestImage:
    """One test image: its file, label (0 good, 1 defective), defect type and mask (None for good)."""

    __test__ = False  # not a pytest test class, despite the name

    path: Path
    label: int
    defect_type: str
    mask: Path | None


@dataclass(frozen=True)
class CategoryListing:
    """The image files of one category, in a deterministic (sorted) order.

    ``train`` holds the images of ``train/good``; ``validation`` those of ``validation/good``
    (empty when the category has no official validation split); ``test`` the images of every
    ``test/<type>`` folder, sorted by type then file name.
    """

    root: Path
    train: tuple[Path, ...]
    test: tuple[TestImage, ...]
    validation: tuple[Path, ...] = ()

    @property
    def defect_types(self) -> tuple[str, ...]:
        """Sorted defect types present in ``test/`` (``good`` excluded)."""
        return tuple(sorted({item.defect_type for item in self.test if item.label == 1}))

    def files(self) -> list[Path]:
        """Every image and mask file of the category (what an import copies)."""
        out = [*self.train, *self.validation]
        for item in self.test:
            out.append(item.path)
            if item.mask is not None:
                out.append(item.mask)
        return out


def is_ignored(path: Path) -> bool:
    """True for hidden files/folders and OS clutter that validation and import skip."""
    return path.name.startswith(".") or path.name.lower() in IGNORED_NAMES


def is_image_file(path: Path) -> bool:
    """True for a file whose suffix (any case) is a supported image type."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _entries(folder: Path) -> list[Path]:
    """Visible entries of ``folder``, sorted by name so every listing and report is deterministic."""
    return sorted((p for p in folder.iterdir() if not is_ignored(p)), key=lambda p: p.name)


class _Scanner:
    """Walks a category once, collecting the listing and the structural problems."""

    def __init__(self, root: Path, masks: str = "pixel") -> None:
        self.root = root
        self.masks = masks  # data.masks: "pixel" or "none" (image labels only)
        self.problems: list[str] = []

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def leaf_images(self, folder: Path, what: str) -> list[Path]:
        """Image files directly in ``folder``; anything else there is reported."""
        images = []
        for entry in _entries(folder):
            if entry.is_dir():
                self.problems.append(
                    f"{self.rel(entry)}/: unexpected sub-folder; {what} must lie directly in {self.rel(folder)}/, "
                    "move or delete it"
                )
            elif not is_image_file(entry):
                self.problems.append(
                    f"{self.rel(entry)}: unknown file type {entry.suffix or '(no suffix)'!r}; "
                    f"only {', '.join(sorted(IMAGE_SUFFIXES))} images are allowed, delete or convert it"
                )
            else:
                images.append(entry)
        return images

    def subfolders(self, folder: Path, what: str) -> list[Path]:
        """Sub-folders of ``folder``; files lying directly in it are reported."""
        dirs = []
        for entry in _entries(folder):
            if entry.is_dir():
                dirs.append(entry)
            else:
                self.problems.append(f"{self.rel(entry)}: {what}; move it into a sub-folder or delete it")
        return dirs

    def scan(self) -> CategoryListing:
        root = self.root
        for entry in _entries(root):
            if entry.name not in TOP_LEVEL and entry.name != REGIONS:
                kind = "folder" if entry.is_dir() else "file"
                suffix = "/" if entry.is_dir() else ""
                self.problems.append(
                    f"{entry.name}{suffix}: unexpected {kind}; a category holds only train/, test/, ground_truth/ "
                    f"and validation/, move or delete it"
                )
        return CategoryListing(
            root=root,
            train=tuple(self.scan_train()),
            test=tuple(self.scan_test()),
            validation=tuple(self.scan_validation()),
        )

    def scan_good_split(self, split: str, why: str, missing: str) -> list[Path]:
        """Images of ``<split>/good``, the only sub-folder a normal-only split may have."""
        folder = self.root / split
        for sub in self.subfolders(folder, f"files must be inside {split}/good/") if folder.is_dir() else []:
            if sub.name != GOOD:
                self.problems.append(
                    f"{split}/{sub.name}/: only {split}/good/ is used ({why}); "
                    f"move these images to test/{sub.name}/ or delete the folder"
                )
        if not (folder / GOOD).is_dir():
            self.problems.append(f"{split}/good/: folder is missing; {missing}")
            return []
        return self.leaf_images(folder / GOOD, f"{split} images")

    def scan_train(self) -> list[Path]:
        return self.scan_good_split(
            "train", "training sees defect-free images only", "put the defect-free training images there"
        )

    def scan_validation(self) -> list[Path]:
        """Images of the optional official validation split (``validation/good`` only: it is normal)."""
        folder = self.root / "validation"
        if not folder.exists():
            return []
        if not folder.is_dir():
            self.problems.append("validation: a file where the validation/ folder belongs; delete or rename it")
            return []
        images = self.scan_good_split(
            "validation",
            "the validation split is defect-free",
            "put the defect-free validation images there or delete validation/",
        )
        if not images and (folder / GOOD).is_dir():
            self.problems.append(
                "validation/good/: holds no images; add defect-free validation images or delete validation/"
            )
        return images

    def scan_masks(self) -> dict[str, dict[str, list[Path]]] | None:
        """``{defect: {image stem: [mask files]}}``, or None when ``ground_truth/`` is missing."""
        gt = self.root / "ground_truth"
        if not gt.is_dir():
            return None
        masks: dict[str, dict[str, list[Path]]] = {}
        for folder in self.subfolders(gt, "masks must be inside ground_truth/<defect type>/"):
            for mask in self.leaf_images(folder, "masks"):
                if folder.name == GOOD:
                    self.problems.append(
                        f"{self.rel(mask)}: a mask for a good image; good images have no masks, "
                        "delete ground_truth/good/"
                    )
                elif not mask.stem.endswith(MASK_SUFFIX):
                    self.problems.append(
                        f"{self.rel(mask)}: mask files must be named <image name>{MASK_SUFFIX}.png "
                        f"(e.g. 000{MASK_SUFFIX}.png for test/{folder.name}/000.png); rename it"
                    )
                else:
                    masks.setdefault(folder.name, {}).setdefault(mask.stem[: -len(MASK_SUFFIX)], []).append(mask)
        return masks

    def scan_test(self) -> list[TestImage]:
        test = self.root / "test"
        if self.masks == "none" and (self.root / "ground_truth").exists():
            self.problems.append(
                "ground_truth/: data.masks is 'none' (image labels only) but the folder is there; "
                "delete or move ground_truth/, or set data.masks: pixel to use its masks"
            )
            masks = None
        else:
            masks = self.scan_masks()
        if not test.is_dir():
            self.problems.append("test/: folder is missing; put test images in test/good/ and test/<defect type>/")
            test_dirs: list[Path] = []
        else:
            test_dirs = self.subfolders(test, "test images must be inside test/good/ or test/<defect type>/")
        items: list[TestImage] = []
        unmasked: list[Path] = []
        for folder in test_dirs:
            defect = folder.name
            label = 0 if defect == GOOD else 1
            images = self.leaf_images(folder, "test images")
            by_stem: dict[str, list[Path]] = {}
            for image in images:
                by_stem.setdefault(image.stem, []).append(image)
            for image in images:
                mask = None
                if label:
                    same_stem = by_stem[image.stem]
                    found = (masks or {}).get(defect, {}).pop(image.stem, [])
                    if len(same_stem) > 1:
                        if image == same_stem[0]:  # report the clash once, not once per file
                            self.problems.append(
                                f"{', '.join(self.rel(p) for p in same_stem)}: images share the name {image.stem!r}, "
                                f"so their mask ground_truth/{defect}/{image.stem}{MASK_SUFFIX}.* is ambiguous; "
                                "rename all but one"
                            )
                    elif len(found) > 1:
                        self.problems.append(
                            f"{', '.join(self.rel(p) for p in found)}: several masks for {self.rel(image)}; "
                            "keep only one"
                        )
                    elif found:
                        mask = found[0]
                    elif masks is not None:
                        unmasked.append(image)
                items.append(TestImage(path=image, label=label, defect_type=defect, mask=mask))
        if masks is None and self.masks != "none":
            defective = sum(item.label for item in items)
            if defective:
                self.problems.append(
                    f"ground_truth/: folder is missing, so the {defective} defective test image(s) have no masks; "
                    f"add ground_truth/<defect type>/<image name>{MASK_SUFFIX}.png for each, "
                    f"or set data.masks: none to evaluate with image labels only (no pixel metrics)"
                )
        for image in unmasked:
            self.problems.append(
                f"{self.rel(image)}: defective test image has no mask; add "
                f"ground_truth/{image.parent.name}/{image.stem}{MASK_SUFFIX}.png (0 = good pixel, 255 = defect) "
                "or remove the image"
            )
        # Whatever the test images did not claim is a mask without an image.
        for defect, stems in sorted((masks or {}).items()):
            for stem, found in sorted(stems.items()):
                for mask in found:
                    self.problems.append(
                        f"{self.rel(mask)}: mask without an image (no test/{defect}/{stem}.*); "
                        "delete it or add the image"
                    )
        if test.is_dir() and not items:
            self.problems.append("test/: holds no images; add test/good/ and test/<defect type>/ images")
        return sorted(items, key=lambda item: (item.defect_type, item.path.name))


def list_category(category_dir: str | os.PathLike[str], *, masks: str = "pixel") -> CategoryListing:
    """List the images and masks of a category (sorted; no decoding).

    Files that :func:`find_problems` would report (unknown types, orphan masks) are left out,
    and a defective image without a usable mask gets ``mask=None``: call
    :func:`validate_category` first when the listing must be complete.

    >>> list_category("data/raw/bottle").defect_types  # doctest: +SKIP
    ('broken_large', 'broken_small', 'contamination')
    """
    return _Scanner(Path(category_dir), masks).scan()


def _decode_problem(exc: DataError, path: Path, root: Path) -> list[str]:
    """The decoding errors of :mod:`anomaly_spotter.dataset.images`, with the path made relative to ``root``."""
    rel = path.relative_to(root).as_posix()
    return [problem.replace(str(path), rel, 1) for problem in exc.problems]


def _check_image(path: Path, root: Path) -> tuple[tuple[int, int] | None, list[str]]:
    try:
        return image_shape(path), []
    except DataError as exc:
        return None, _decode_problem(exc, path, root)


def _check_test_image(item: TestImage, root: Path) -> list[str]:
    size, problems = _check_image(item.path, root)
    if item.mask is None:
        return problems
    mask_rel = item.mask.relative_to(root).as_posix()
    try:
        values = read_mask_values(item.mask)
    except DataError as exc:
        return problems + _decode_problem(exc, item.mask, root)
    if size is not None and values.shape != size:
        problems.append(
            f"{mask_rel}: mask is {values.shape[0]}x{values.shape[1]} (height x width) but its image "
            f"{item.path.relative_to(root).as_posix()} is {size[0]}x{size[1]}; "
            "masks must be the same size as their image"
        )
    # Binary means 0 plus at most one foreground value, so both 0/1 and 0/255 masks pass.
    present = _distinct(values)
    foreground = present[present > 0]
    if len(foreground) > 1:
        shown = ", ".join(_shown(int(v), values.dtype) for v in present[:6]) + (", ..." if len(present) > 6 else "")
        problems.append(
            f"{mask_rel}: mask is not binary, it holds {len(present)} distinct values ({shown}); "
            f"use 0 (black) for good pixels and "
            f"one value (255 or 1, or one colour) for defects, saved as PNG "
            f"(JPEG compression and smooth resizing add in-between values)"
        )
    elif not len(foreground):
        # Its defect pixels would silently count as normal in pixel AUROC and AU-PRO.
        problems.append(
            f"{mask_rel}: mask is all zero, so the defective image {item.path.relative_to(root).as_posix()} "
            f"has no defect pixels; "
            f"mark the defect with a non-zero value (255 or 1; in a colour or palette PNG any non-black colour) "
            f"or, if the image shows no defect, move it to test/good/ and delete the mask"
        )
    return problems


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a mask from :func:`read_mask_values` (bincount for 8/16-bit: faster than sorting)."""
    if values.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(values.ravel()))
    return np.unique(values)


def _shown(value: int, dtype: np.dtype) -> str:
    """A mask value as the user would write it: grayscale as is, a packed colour as #RRGGBB."""
    if dtype == np.uint32:
        return f"#{value:06x}"
    if dtype == np.uint64:
        return f"#{value:012x}"  # 16 bits per channel
    return str(value)


def _content_problems(listing: CategoryListing) -> list[str]:
    """Decode every image and mask (in parallel) and check mask sizes and values."""
    root = listing.root
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        train = pool.map(lambda path: _check_image(path, root)[1], (*listing.train, *listing.validation))
        test = pool.map(lambda item: _check_test_image(item, root), listing.test)
        return [problem for problems in (*train, *test) for problem in problems]


def find_problems(
    category_dir: str | os.PathLike[str], *, min_train_images: int = 1, masks: str = "pixel"
) -> list[str]:
    """Every problem with the category at ``category_dir``; an empty list when it is usable.

    Checks the folder structure, file types, that every image and mask decodes, that every
    defective test image has exactly one mask of the same size holding binary values with at
    least one defect pixel, that no mask lacks an image or belongs to a good image, and that
    ``train/good`` holds at least ``min_train_images`` images. ``masks="none"``: no ``ground_truth/``.

    >>> find_problems("data/raw/bottle", min_train_images=10)  # doctest: +SKIP
    ['ground_truth/crack/001_mask.png: mask without an image (no test/crack/001.*); delete it or add the image']
    """
    root = Path(category_dir)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "the category folder does not exist"
        return [f"{root}: {what}; check the path and the category name"]
    scanner = _Scanner(root, masks)
    listing = scanner.scan()
    problems = scanner.problems
    if (root / "train" / GOOD).is_dir() and len(listing.train) < min_train_images:
        problems.append(
            f"train/good/: holds {len(listing.train)} image(s) but at least {min_train_images} are needed "
            f"(min_train_images); add defect-free training images"
        )
    return problems + _content_problems(listing)


def validate_category(category_dir: str | os.PathLike[str], *, min_train_images: int = 1, masks: str = "pixel") -> None:
    """Raise :class:`DataError` listing every problem of the category, or return quietly.

    >>> validate_category("data/raw/bottle", min_train_images=4)  # doctest: +SKIP
    """
    problems = find_problems(category_dir, min_train_images=min_train_images, masks=masks)
    if problems:
        raise DataError(problems, root=str(category_dir))
