"""Download, verify (md5) and extract PASCAL VOC 2012 trainval and the SBD benchmark.

    python -m data_prep.download_voc --out DATA            # DATA/VOCdevkit/VOC2012, DATA/benchmark_RELEASE

Downloads resume from `<file>.part`. Without internet it stops (exit code 2) and says which files to
fetch by hand, from where, and where to put them; re-running then verifies and extracts them.

Nothing is left half-written: an archive is extracted into a temporary folder `DATA/.extracting-<file>/`
and moved into place at the end, and the marker `DATA/.<key>.extracted` is written last. A folder without
its marker (an interrupted extraction, or one made by an older version of this script) is extracted again.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sipe.infra.errors import SipeError, cli_entry
from sipe.infra.runtime import atomic_write_json

CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One downloadable archive: file name, official URL (+ mirrors), md5, and a path it extracts to."""

    key: str
    filename: str
    url: str
    md5: str
    extracts_to: str
    mirrors: tuple[str, ...] = ()

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.mirrors)


VOC2012 = Archive(
    key="voc2012",
    filename="VOCtrainval_11-May-2012.tar",
    url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    md5="6cd6e144f989b92b3379bac3b3de84fd",
    extracts_to="VOCdevkit/VOC2012",
    mirrors=("https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",),
)
SBD = Archive(
    key="sbd",
    filename="benchmark.tgz",
    url="http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
    extracts_to="benchmark_RELEASE/dataset",
)
ARCHIVES = {a.key: a for a in (VOC2012, SBD)}


class DownloadError(SipeError, RuntimeError):
    """A download could not be completed or verified."""


class ChecksumError(DownloadError):
    """A file's md5 differs from the published one."""


def file_md5(path: str | os.PathLike) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: str | os.PathLike, expected: str) -> None:
    """Raise ChecksumError naming the file when its md5 is not `expected`."""
    actual = file_md5(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"{path}: md5 {actual} does not match the published {expected}; the file is incomplete or "
            "corrupt: delete it and download it again"
        )


def download(url: str, dest: str | os.PathLike, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest`, resuming a previous `<dest>.part`, and check its md5.

    A `dest` that already has the right md5 is kept. Network failures raise urllib.error.URLError/OSError;
    a wrong md5 deletes the partial file and raises ChecksumError.
    """
    dest = Path(dest)
    if dest.is_file():
        if md5 is None or file_md5(dest) == md5.lower():
            return dest
        print(f"{dest} exists but its md5 is not {md5}: downloading it again", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:
            raise
        response = None
    if response is not None:
        with response:
            resumed = start > 0 and getattr(response, "status", None) == 206
            length = response.headers.get("Content-Length")
            total = (int(length) + (start if resumed else 0)) if length else None
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=start if resumed else 0, unit="B", unit_scale=True, desc=dest.name,
                file=sys.stderr, disable=None,
            ) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
    if md5 is not None:
        try:
            verify_md5(part, md5)
        except ChecksumError:
            part.unlink()
            raise
    part.replace(dest)
    return dest


def _move_into(src: Path, dest: Path) -> None:
    """Move `src` to `dest`: one rename when `dest` is absent, else merged entry by entry (files replaced)."""
    if src.is_dir() and dest.is_dir():
        for child in sorted(src.iterdir()):
            _move_into(child, dest / child.name)
        return
    if dest.is_dir():
        shutil.rmtree(dest)
    os.replace(src, dest)


def extract(archive: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Unpack a tar/tgz into out_dir through the temporary folder `out_dir/.extracting-<archive name>/`.

    Members may not leave it (tarfile's "data" filter). Once everything is unpacked, each top-level entry is
    renamed into out_dir (merged file by file into an existing folder, e.g. the rest of an earlier,
    interrupted extraction; files already there and not in the archive are kept). An interruption leaves
    only the temporary folder, which the next call deletes. Returns the top-level names.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".extracting-{Path(archive).name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    tops = sorted(p.name for p in tmp.iterdir())
    for name in tops:
        _move_into(tmp / name, out_dir / name)
    shutil.rmtree(tmp)
    return tops


def marker_path(archive: Archive, out_dir: Path) -> Path:
    """`out_dir/.<key>.extracted`: written after `archive` was extracted completely."""
    return Path(out_dir) / f".{archive.key}.extracted"


def extract_once(archive: Archive, path: Path, out_dir: Path) -> bool:
    """Extract `path` (the file of `archive`) into out_dir unless its marker says it was; True if extracted now.

    A target folder without the marker is an extraction that did not finish: it is extracted again."""
    marker, target = marker_path(archive, out_dir), Path(out_dir) / archive.extracts_to
    if marker.is_file() and target.is_dir():
        print(f"already extracted: {target}")
        return False
    if target.exists():
        print(f"{target} exists without {marker.name}: an earlier extraction did not finish; extracting again")
    marker.unlink(missing_ok=True)
    print(f"extracting {path} ...")
    extract(path, out_dir)
    atomic_write_json(marker, {"archive": archive.filename, "md5": archive.md5, "extracts_to": archive.extracts_to})
    return True


def manual_instructions(archives: Sequence[Archive], out_dir: Path) -> str:
    """What to download by hand, from where, and where to put it."""
    lines = [f"Fetch these files on a machine with internet and copy them into {out_dir}/ :"]
    for a in archives:
        lines.append(f"  - {a.filename}  (md5 {a.md5})")
        lines.append(f"      from {a.url}")
        lines.extend(f"      or   {m}" for m in a.mirrors)
        lines.append(f"      to   {out_dir / a.filename}")
    lines.append(f"then run again: python -m data_prep.download_voc --out {out_dir}")
    lines.append("(it verifies the md5 of the files already there and extracts them).")
    return "\n".join(lines)


def fetch(archive: Archive, out_dir: Path, timeout: float = 60.0) -> Path:
    """Download `archive` into out_dir from its first reachable URL; re-raises the last network error."""
    error: OSError | None = None
    for url in archive.urls:
        try:
            return download(url, out_dir / archive.filename, archive.md5, timeout)
        except OSError as e:
            error = e
            print(f"could not download {url}: {e}", file=sys.stderr)
    assert error is not None
    raise error


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for the archives and their contents")
    parser.add_argument("--only", nargs="+", choices=sorted(ARCHIVES), default=sorted(ARCHIVES))
    parser.add_argument("--no-extract", action="store_true", help="download and verify only")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    out: Path = args.out.expanduser().resolve()
    failed: list[Archive] = []
    for archive in (a for a in ARCHIVES.values() if a.key in args.only):
        try:
            path = fetch(archive, out, args.timeout)
        except OSError:
            failed.append(archive)
            continue
        except ChecksumError as e:
            print(e, file=sys.stderr)
            failed.append(archive)
            continue
        print(f"ok: {path} (md5 {archive.md5})")
        if args.no_extract:
            continue
        extract_once(archive, path, out)
    if failed:
        print(f"\nCould not download or verify: {', '.join(a.filename for a in failed)} (no internet access?)."
              f"\n{manual_instructions(failed, out)}", file=sys.stderr)
        return 2
    voc = out / VOC2012.extracts_to
    print(
        "\nNext steps:\n"
        f"  python -m data_prep.convert_sbd --voc-root {voc} --sbd-root {out / SBD.extracts_to}\n"
        f"  python -m data_prep.make_cls_labels --voc-root {voc}\n"
        f"  python -m data_prep.verify --root {voc}\n"
        f"  export SIPE_DATA_ROOT={voc}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
