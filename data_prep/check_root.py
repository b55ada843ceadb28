"""Check a data root's layout before anything is installed (standard library only: runs with a bare python3.11).

    python3.11 data_prep/check_root.py DATA_ROOT [--splits train_aug train]

Checks that DATA_ROOT is a folder in the VOCdevkit/VOC2012 layout: JPEGImages/, SegmentationClassAug/,
ImageSets/Segmentation/<split>.txt for each split (present, non-empty), cls_labels_voc.npy (a .npy file),
and that every listed id has its image and mask file. Nothing is decoded: `python -m data_prep.verify`
does the full check, and the runner checks the labels (`sipe.reproduce.check_data_root`).
Exit status 0 when the layout is fine, 2 with one line `error: ...` naming the file and the fix.

The folder names repeat those of `sipe.data.voc` (tests/test_data_prep.py checks they agree), because this
script must not import the package, whose dependencies are not installed yet when `make` calls it.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClassAug"
SPLIT_DIR = Path("ImageSets") / "Segmentation"
LABELS_FILE = "cls_labels_voc.npy"
DEFAULT_SPLITS = ("train_aug", "train")
NPY_MAGIC = b"\x93NUMPY"
FIX = ("pass DATA_ROOT=/path/to/VOC2012 (or set SIPE_DATA_ROOT) to a folder in the VOCdevkit/VOC2012 layout; "
       "build one as described in data_prep/README.md")


class LayoutError(Exception):
    """The data root does not have the expected layout; the message names the path and the fix."""


def read_ids(path: Path) -> list[str]:
    """Ids of a split list: the first token of each non-empty line (`/JPEGImages/<id>.jpg` lines give `<id>`)."""
    ids = []
    for line in path.read_text().splitlines():
        if line.strip():
            token = line.split()[0]
            ids.append(Path(token).stem if "/" in token else token)
    return ids


def check_layout(root: str | Path, splits: Sequence[str] = DEFAULT_SPLITS) -> dict[str, int]:
    """{split: number of ids} when `root` has the layout; raises LayoutError naming the first problem."""
    root = Path(root).expanduser()
    if not str(root) or not root.is_dir():
        raise LayoutError(f"data root {str(root) or '(empty)'} is not a folder; {FIX}")
    for folder in (IMAGE_DIR, MASK_DIR, str(SPLIT_DIR)):
        if not (root / folder).is_dir():
            raise LayoutError(f"folder {root / folder} not found; {FIX}")
    labels = root / LABELS_FILE
    if not labels.is_file():
        raise LayoutError(f"label file {labels} not found; write it with python -m data_prep.make_cls_labels")
    with labels.open("rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise LayoutError(f"label file {labels} is not a .npy file; rebuild it with python -m data_prep.make_cls_labels")
    counts = {}
    for split in splits:
        path = root / SPLIT_DIR / f"{split}.txt"
        if not path.is_file():
            available = sorted(p.stem for p in (root / SPLIT_DIR).glob("*.txt"))
            raise LayoutError(f"split list {path} not found (available: {available or 'none'}); "
                              "write it with python -m data_prep.convert_sbd")
        ids = read_ids(path)
        if not ids:
            raise LayoutError(f"split list {path} is empty; rebuild it with python -m data_prep.convert_sbd")
        for folder, suffix, fix in ((IMAGE_DIR, ".jpg", "python -m data_prep.download_voc"),
                                    (MASK_DIR, ".png", "python -m data_prep.convert_sbd")):
            missing = [i for i in ids if not (root / folder / f"{i}{suffix}").is_file()]
            if missing:
                raise LayoutError(f"{len(missing)} id(s) of {path} have no file in {root / folder} (e.g. "
                                  f"{root / folder / (missing[0] + suffix)}); restore them with {fix}")
        counts[split] = len(ids)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the data root (VOCdevkit/VOC2012 layout)")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), help="split lists that must exist")
    args = parser.parse_args(argv)
    try:
        counts = check_layout(args.root, args.splits)
    except (LayoutError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"data root {Path(args.root).expanduser()}: layout ok ("
          + ", ".join(f"{split} {n} ids" for split, n in counts.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
