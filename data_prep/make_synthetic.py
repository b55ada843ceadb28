"""Write a tiny synthetic dataset in the VOC layout (coloured shapes; for smoke tests and CI).

    python -m data_prep.make_synthetic --out /tmp/synthetic_voc [--n-images 12 --height 96 --width 128 --seed 0]
    export SIPE_DATA_ROOT=/tmp/synthetic_voc
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sipe.data.synthetic import make_synthetic_voc
from sipe.infra.errors import SipeError, cli_entry


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder to write (created if missing)")
    parser.add_argument("--n-images", type=int, default=12)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, nargs="+", default=None,
                        help="1-based class indices to draw from (default: all 20)")
    args = parser.parse_args(argv)
    try:
        root = make_synthetic_voc(args.out, args.n_images, (args.height, args.width), args.seed,
                                  classes=args.classes)
    except ValueError as e:
        raise SipeError(f"{e} (see --help for --n-images, --height, --width, --classes)") from e
    print(f"wrote {args.n_images} synthetic images to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
