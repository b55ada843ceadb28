"""Build cls_labels_voc.npy (image-level labels) from the VOC XML annotations.

    python -m data_prep.make_cls_labels --voc-root DATA/VOCdevkit/VOC2012 [--splits train_aug val]

PSA/IRN convention: a class is present when any object of it is annotated, difficult or truncated ones
included. Output: a pickled dict {id: float32[20]} at <voc-root>/cls_labels_voc.npy.
"""
from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from sipe.data.voc import CLASS_NAMES, LABELS_FILE, NUM_CLASSES, DataError, read_split
from sipe.infra.errors import cli_entry
from sipe.infra.runtime import atomic_save_npy

CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES[1:])}


def label_from_xml(path: str | os.PathLike) -> np.ndarray:
    """float32 (20,) multi-hot of the object classes named in a VOC annotation file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation {path} not found; extract VOCtrainval_11-May-2012.tar (data_prep/download_voc.py)")
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise DataError(f"cannot parse annotation {path} ({e}); re-extract VOCtrainval_11-May-2012.tar") from e
    label = np.zeros(NUM_CLASSES, dtype=np.float32)
    for node in tree.getroot().iterfind("object/name"):
        name = (node.text or "").strip()
        if name not in CLASS_INDEX:
            raise DataError(f"annotation {path} names an unknown class {name!r}; expected one of {CLASS_NAMES[1:]}")
        label[CLASS_INDEX[name]] = 1.0
    return label


def make_cls_labels(annotation_dir: str | os.PathLike, ids: Iterable[str]) -> dict[str, np.ndarray]:
    """{id: float32 (20,)} from `<annotation_dir>/<id>.xml` for each id."""
    return {i: label_from_xml(Path(annotation_dir) / f"{i}.xml") for i in ids}


def save_cls_labels(labels: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write the dict as a pickled .npy at exactly `path`, atomically (load with np.load(path, allow_pickle=True).item())."""
    atomic_save_npy(path, labels, allow_pickle=True)


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc-root", required=True, type=Path, help="VOCdevkit/VOC2012 (holds Annotations/)")
    parser.add_argument("--splits", nargs="+", default=["train_aug", "val"],
                        help="lists in ImageSets/Segmentation whose ids get a label")
    parser.add_argument("--out", type=Path, default=None, help=f"output file (default <voc-root>/{LABELS_FILE})")
    args = parser.parse_args(argv)
    ids = sorted({i for split in args.splits for i in read_split(args.voc_root, split)})
    labels = make_cls_labels(args.voc_root / "Annotations", ids)
    out = args.out or args.voc_root / LABELS_FILE
    save_cls_labels(labels, out)
    print(f"wrote labels of {len(labels)} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
