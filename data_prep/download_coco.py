"""Download and unzip MS COCO 2014 (train2014, val2014, 2014 instance annotations).

    python -m data_prep.download_coco --out DATA/coco2014 [--print-only]

Downloads resume from `<file>.part` (COCO publishes no checksums; the zips are checked by unzipping).
Without internet it stops (exit code 2) and prints which files to fetch by hand, from where, and where to
put them; run it again afterwards to unzip them, then `python -m data_prep.make_coco`.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

from data_prep.download_voc import download
from sipe.data.coco import COCO_FILES, download_instructions

EXTRACTS_TO = {"train2014.zip": "train2014", "val2014.zip": "val2014", "annotations_trainval2014.zip": "annotations"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for the zips and their contents")
    parser.add_argument("--print-only", action="store_true", help="only print what to fetch and where")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    out: Path = args.out.expanduser().resolve()
    if args.print_only:
        print(download_instructions(out, out.parent / "coco_sipe"))
        return 0
    failed = []
    for name, url, _ in COCO_FILES:
        dest = out / name
        if not (out / EXTRACTS_TO[name]).is_dir():
            try:
                download(url, dest, None, args.timeout)
            except OSError as e:
                print(f"could not download {url}: {e}", file=sys.stderr)
                failed.append(name)
                continue
            print(f"unzipping {dest} ...")
            try:
                with zipfile.ZipFile(dest) as z:
                    z.extractall(out)
            except zipfile.BadZipFile as e:
                print(f"{dest} is not a complete zip ({e}): delete it and run again", file=sys.stderr)
                failed.append(name)
                continue
        print(f"ok: {out / EXTRACTS_TO[name]}")
    if failed:
        print(f"\nCould not download or unzip: {', '.join(failed)} (no internet access?).\n"
              f"{download_instructions(out, out.parent / 'coco_sipe')}", file=sys.stderr)
        return 2
    print(f"\nNext: python -m data_prep.make_coco --coco-dir {out} --out {out.parent / 'coco_sipe'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
