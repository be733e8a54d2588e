"""Check an evaluated workspace against its own per-image results, by hand count (not a benchmark of speed).

For each category: every false negative and false positive of ``evaluation/<cat>/scores.csv``
(``predicted_anomalous`` against ``label``) must be listed in ``evaluation/<cat>/mistakes.csv``
with its drawn PNG present, and ``per_defect_recall`` / ``false_alarm_rate`` in
``metrics/<cat>.json`` must equal the counts from ``scores.csv``. Prints the counts; exits 1
on any disagreement.

Run: ``python bench/mistakes_check.py [--root DIR] weave marble washer``
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path


def check(root: Path, category: str) -> list[str]:
    results = root / "evaluation" / category
    with open(results / "scores.csv", newline="") as handle:
        scores = list(csv.DictReader(handle))
    with open(results / "mistakes.csv", newline="") as handle:
        listed = list(csv.DictReader(handle))
    metrics = json.loads((root / "metrics" / f"{category}.json").read_text(encoding="utf-8"))
    problems = []
    fn = {r["file"] for r in scores if r["label"] == "1" and r["predicted_anomalous"] == "0"}
    fp = {r["file"] for r in scores if r["label"] == "0" and r["predicted_anomalous"] == "1"}
    for kind, expected in (("fn", fn), ("fp", fp)):
        got = {r["file"] for r in listed if r["kind"] == kind}
        if got != expected:
            problems.append(
                f"{category}: {kind} in scores.csv but not in the gallery: {sorted(expected - got)[:5]}, "
                f"extra: {sorted(got - expected)[:5]}"
            )
    missing = [r["image"] for r in listed if not (results / r["image"]).is_file()]
    if missing:
        problems.append(f"{category}: drawn mistakes missing: {missing[:5]}")
    images = Counter(r["defect_type"] for r in scores if r["label"] == "1")
    flagged = Counter(r["defect_type"] for r in scores if r["label"] == "1" and r["predicted_anomalous"] == "1")
    recall = {name: flagged[name] / count for name, count in sorted(images.items())}
    stored = metrics["per_defect_recall"]  # written with 10 significant digits
    if set(recall) != set(stored) or any(abs(recall[k] - stored[k]) > 1e-9 for k in recall):
        problems.append(f"{category}: per_defect_recall {metrics['per_defect_recall']} but scores.csv gives {recall}")
    good = [r for r in scores if r["label"] == "0"]
    far = len(fp) / len(good) if good else float("nan")
    if abs(far - metrics["false_alarm_rate"]) > 1e-9:
        problems.append(f"{category}: false_alarm_rate {metrics['false_alarm_rate']} but scores.csv gives {far}")
    by_hand = ", ".join(f"{name} {flagged[name]}/{count}" for name, count in sorted(images.items()))
    print(
        f"{category}: {len(fn)} false negatives and {len(fp)} false positives in scores.csv, {len(listed)} in the "
        f"gallery; recall by hand {by_hand}; false alarms {len(fp)}/{len(good)}; "
        f"image AUROC {metrics['image_auroc']:.4f}"
    )
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("categories", nargs="+")
    args = parser.parse_args()
    problems = [p for category in args.categories for p in check(args.root, category)]
    for problem in problems:
        print(f"MISMATCH {problem}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
