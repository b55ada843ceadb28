"""Check a data root: every image and mask of the splits decodes and agrees, every id has a label,
and (when the root has one) every file matches MANIFEST.sha256.

    python -m data_prep.verify --root $SIPE_DATA_ROOT [--splits train_aug train val] [--max-images N]

Exit code 0 when everything is fine, 1 when problems were found (each is listed), 2 when the check cannot
start (no data root, no split lists).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sipe.infra.config import DATA_ROOT_ENV
from sipe.data.voc import SPLIT_DIR, DataError, scan_dataset
from sipe.infra.errors import cli_entry

MANIFEST = "MANIFEST.sha256"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_manifest(root: str | os.PathLike, manifest: str | os.PathLike | None = None) -> list[str]:
    """Problems found checking `sha256sum`-format lines (`<hex>  <relative path>`) against files under root."""
    root = Path(root)
    manifest = Path(manifest) if manifest is not None else root / MANIFEST
    problems = []
    for n, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name:
            problems.append(f"{manifest}:{n}: not a sha256sum line: {line!r}")
            continue
        path = root / name
        if not path.is_file():
            problems.append(f"{path}: listed in {manifest.name} but missing")
        elif file_sha256(path) != digest.lower():
            problems.append(f"{path}: sha256 differs from {manifest.name} (modified or corrupt; restore it)")
    return problems


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=os.environ.get(DATA_ROOT_ENV) or None,
                        help=f"data root (default ${DATA_ROOT_ENV})")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="splits to scan (default: every list in ImageSets/Segmentation)")
    parser.add_argument("--max-images", type=int, default=None, help="scan only the first n ids of each split")
    parser.add_argument("--no-masks", action="store_true", help="skip the mask checks")
    parser.add_argument("--no-manifest", action="store_true", help=f"skip {MANIFEST} even when present")
    args = parser.parse_args(argv)
    if args.root is None:
        parser.error(f"give --root or set {DATA_ROOT_ENV}")
    root = Path(args.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist; check --root or ${DATA_ROOT_ENV} (data_prep/README.md)")
    splits = args.splits or sorted(p.stem for p in (root / SPLIT_DIR).glob("*.txt"))
    if not splits:
        raise DataError(f"no split lists in {root / SPLIT_DIR}; write them with python -m data_prep.convert_sbd "
                        "(see data_prep/README.md)")
    problems: list[str] = []
    try:
        for split in splits:
            report = scan_dataset(root, split, check_masks=not args.no_masks, max_images=args.max_images)
            print(f"{split}: {report.n_checked} ids, {len(report.problems)} problem(s)")
            problems += [str(p) for p in report.problems]
    except DataError as e:
        problems.append(str(e))
    if not args.no_manifest and (root / MANIFEST).is_file():
        manifest_problems = check_manifest(root)
        print(f"{MANIFEST}: {len(manifest_problems)} problem(s)")
        problems += manifest_problems
    for p in problems:
        print(p, file=sys.stderr)
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
