"""data_prep scripts: SBD conversion, labels from XML, downloads (offline only), verification."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from data_prep import check_root, convert_sbd, download_voc, make_cls_labels, make_synthetic, verify
from sipe.infra import runtime
from sipe.data import voc
from sipe.data.voc import DataError, load_cls_labels, load_mask, read_split, save_mask, scan_dataset
from sipe.infra.errors import SipeError

REPO = Path(__file__).resolve().parents[1]

MD5_ABC = "900150983cd24fb0d6963f7d28e17f72"


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens a socket connection."""
    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- convert_sbd -------------------------------------------------------------------------------------

def write_sbd_mat(path: Path, seg: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1), "CategoriesPresent": 1}})


def write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


@pytest.fixture
def voc_sbd(tmp_path):
    voc, sbd = tmp_path / "VOC2012", tmp_path / "dataset"
    seg_s1 = np.array([[0, 0, 3], [0, 3, 3]], dtype=np.uint8)
    seg_s2 = np.array([[15, 15, 0], [0, 0, 0], [12, 12, 12]], dtype=np.float64)
    write_sbd_mat(sbd / "cls" / "s1.mat", seg_s1)
    write_sbd_mat(sbd / "cls" / "s2.mat", seg_s2)
    write_sbd_mat(sbd / "cls" / "both.mat", np.full((2, 2), 7, dtype=np.uint8))
    write_sbd_mat(sbd / "cls" / "v_val.mat", np.full((2, 2), 9, dtype=np.uint8))
    write_list(sbd / "train.txt", ["s1", "both"])
    write_list(sbd / "val.txt", ["s2", "v_val"])
    voc_both = np.array([[7, 255], [255, 0]], dtype=np.uint8)
    save_mask(voc / "SegmentationClass" / "both.png", voc_both)
    save_mask(voc / "SegmentationClass" / "v_train.png", np.array([[1, 255, 0]], dtype=np.uint8))
    save_mask(voc / "SegmentationClass" / "v_val.png", np.array([[20, 255]], dtype=np.uint8))
    write_list(voc / "ImageSets" / "Segmentation" / "train.txt", ["v_train", "both"])
    write_list(voc / "ImageSets" / "Segmentation" / "val.txt", ["v_val"])
    return voc, sbd, {"s1": seg_s1, "s2": seg_s2.astype(np.uint8), "both": voc_both}


def test_train_aug_ids_is_sbd_and_voc_train_minus_voc_val():
    assert convert_sbd.train_aug_ids(["a", "b"], ["c", "v"], ["t", "a"], ["v", "x"]) == ["a", "b", "c", "t"]


def test_convert_sbd_writes_masks_and_train_aug(voc_sbd):
    voc, sbd, expected = voc_sbd
    result = convert_sbd.convert(voc, sbd)
    assert result.train_aug == ["both", "s1", "s2", "v_train"]
    assert read_split(voc, "train_aug") == ["both", "s1", "s2", "v_train"]
    assert (result.n_from_voc, result.n_from_sbd) == (3, 2)
    for image_id, mask in expected.items():
        np.testing.assert_array_equal(load_mask(voc, image_id), mask)
    np.testing.assert_array_equal(load_mask(voc, "v_val"), [[20, 255]])
    np.testing.assert_array_equal(load_mask(voc, "v_train"), [[1, 255, 0]])


def test_convert_sbd_names_missing_sources(voc_sbd, capsys):
    voc, sbd, _ = voc_sbd
    (sbd / "cls" / "s2.mat").unlink()
    with pytest.raises(DataError) as e:
        convert_sbd.convert(voc, sbd)
    assert str(sbd / "cls" / "s2.mat") in str(e.value) and str(voc / "SegmentationClass" / "s2.png") in str(e.value)
    assert convert_sbd.main(["--voc-root", str(voc), "--sbd-root", str(sbd)]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last.startswith("error: no mask for 's2'") and "s2.mat" in last


def test_convert_sbd_main(voc_sbd, capsys):
    voc, sbd, _ = voc_sbd
    assert convert_sbd.main(["--voc-root", str(voc), "--sbd-root", str(sbd)]) == 0
    assert "4 ids" in capsys.readouterr().out


def test_load_sbd_mask_rejects_bad_file(tmp_path):
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"other": np.zeros(2)})
    with pytest.raises(DataError, match="x.mat"):
        convert_sbd.load_sbd_mask(path)


# --- make_cls_labels ---------------------------------------------------------------------------------

def voc_xml(*objects: tuple[str, int]) -> str:
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult>"
        "<part><name>head</name></part><part><name>hand</name></part></object>"
        for name, difficult in objects
    )
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


@pytest.fixture
def annotated(tmp_path):
    voc = tmp_path / "VOC2012"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "Annotations" / "a.xml").write_text(voc_xml(("person", 1), ("dog", 0), ("person", 0)))
    (voc / "Annotations" / "b.xml").write_text(voc_xml(("cat", 0), ("cat", 0)))
    (voc / "Annotations" / "c.xml").write_text(voc_xml((" tvmonitor\n", 0), ("aeroplane", 1)))
    write_list(voc / "ImageSets" / "Segmentation" / "train_aug.txt", ["a", "b"])
    write_list(voc / "ImageSets" / "Segmentation" / "val.txt", ["c"])
    return voc


def test_label_from_xml_counts_every_object(annotated):
    label = make_cls_labels.label_from_xml(annotated / "Annotations" / "a.xml")
    assert label.dtype == np.float32 and label.shape == (20,)
    assert np.flatnonzero(label).tolist() == [11, 14]
    assert np.flatnonzero(make_cls_labels.label_from_xml(annotated / "Annotations" / "b.xml")).tolist() == [7]
    assert np.flatnonzero(make_cls_labels.label_from_xml(annotated / "Annotations" / "c.xml")).tolist() == [0, 19]


def test_label_from_xml_errors(annotated):
    bad = annotated / "Annotations" / "u.xml"
    bad.write_text(voc_xml(("unicorn", 0)))
    with pytest.raises(DataError, match="unicorn") as e:
        make_cls_labels.label_from_xml(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(DataError, match="missing.xml"):
        make_cls_labels.label_from_xml(annotated / "Annotations" / "missing.xml")
    broken = annotated / "Annotations" / "broken.xml"
    broken.write_text("<annotation><object>")
    with pytest.raises(DataError, match="broken.xml"):
        make_cls_labels.label_from_xml(broken)


def test_make_cls_labels_main_writes_loadable_file(annotated):
    assert make_cls_labels.main(["--voc-root", str(annotated)]) == 0
    labels = load_cls_labels(annotated)
    assert sorted(labels) == ["a", "b", "c"]
    assert np.flatnonzero(labels["a"]).tolist() == [11, 14]
    assert np.flatnonzero(labels["c"]).tolist() == [0, 19]


# --- download_voc (never touches the network) --------------------------------------------------------

def test_md5_verification(tmp_path):
    path = tmp_path / "small.bin"
    path.write_bytes(b"abc")
    assert download_voc.file_md5(path) == MD5_ABC
    download_voc.verify_md5(path, MD5_ABC.upper())
    with pytest.raises(download_voc.ChecksumError) as e:
        download_voc.verify_md5(path, "0" * 32)
    assert str(path) in str(e.value) and MD5_ABC in str(e.value)


def test_archive_checksums_and_names_agree_with_the_instructions():
    """The md5s and file names users check by hand (data_prep/README.md) are the ones the script verifies."""
    readme = (REPO / "data_prep" / "README.md").read_text()
    for archive in (download_voc.VOC2012, download_voc.SBD):
        assert f"`{archive.filename}` (md5 `{archive.md5}`)" in readme, archive.key
        assert archive.url.endswith(archive.filename) and all(m.endswith(archive.filename) for m in archive.mirrors)


class FakeResponse(io.BytesIO):
    def __init__(self, body: bytes, status: int):
        super().__init__(body)
        self.status = status
        self.headers = {"Content-Length": str(len(body))}


def serve(monkeypatch, payload: bytes, honour_range: bool) -> list[str | None]:
    """Replace urlopen by a server of `payload`; returns the Range headers it was asked for."""
    seen: list[str | None] = []

    def fake_urlopen(request, timeout=None):
        asked = request.get_header("Range")
        seen.append(asked)
        if asked and honour_range:
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            return FakeResponse(payload[start:], 206)
        return FakeResponse(payload, 200)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return seen


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_partial_file(tmp_path, monkeypatch, no_network, honour_range):
    payload = bytes(range(256)) * 40
    dest = tmp_path / "file.tar"
    (tmp_path / "file.tar.part").write_bytes(payload[:1000])
    seen = serve(monkeypatch, payload, honour_range)
    out = download_voc.download("http://example.invalid/file.tar", dest, hashlib.md5(payload).hexdigest())
    assert out == dest and dest.read_bytes() == payload
    assert seen == ["bytes=1000-"] and not (tmp_path / "file.tar.part").exists()


def test_download_rejects_wrong_checksum(tmp_path, monkeypatch, no_network):
    serve(monkeypatch, b"abc", True)
    with pytest.raises(download_voc.ChecksumError):
        download_voc.download("http://example.invalid/f", tmp_path / "f", "0" * 32)
    assert list(tmp_path.iterdir()) == []
    assert download_voc.download("http://example.invalid/f", tmp_path / "f", MD5_ABC).read_bytes() == b"abc"


def test_offline_failure_says_what_to_fetch(tmp_path, monkeypatch, no_network, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert download_voc.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    for archive in (download_voc.VOC2012, download_voc.SBD):
        assert archive.url in err and archive.md5 in err
        assert str(tmp_path.resolve() / archive.filename) in err
    assert "download_voc --out" in err


def test_present_archive_is_verified_and_extracted_offline(tmp_path, monkeypatch, no_network, capsys):
    src = tmp_path / "src" / "VOCdevkit" / "VOC2012" / "JPEGImages"
    src.mkdir(parents=True)
    (src / "x.jpg").write_bytes(b"jpeg")
    archive = tmp_path / "out" / "VOCtrainval_11-May-2012.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "src" / "VOCdevkit", arcname="VOCdevkit")
    monkeypatch.setitem(download_voc.ARCHIVES, "voc2012",
                        replace(download_voc.VOC2012, md5=download_voc.file_md5(archive)))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("no download expected"))
    assert download_voc.main(["--out", str(archive.parent), "--only", "voc2012"]) == 0
    assert (archive.parent / "VOCdevkit" / "VOC2012" / "JPEGImages" / "x.jpg").read_bytes() == b"jpeg"
    assert "SIPE_DATA_ROOT" in capsys.readouterr().out


# --- make_synthetic and verify -----------------------------------------------------------------------

def write_manifest(root: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n"
             for p in sorted(root.rglob("*")) if p.is_file()]
    (root / verify.MANIFEST).write_text("".join(lines))


def test_make_synthetic_then_verify(tmp_path, capsys):
    root = tmp_path / "syn"
    assert make_synthetic.main(["--out", str(root), "--n-images", "6", "--height", "40", "--width", "56"]) == 0
    assert len(read_split(root, "train_aug")) == 6 - 2 and scan_dataset(root, "train_aug").ok  # all but val
    write_manifest(root)
    assert verify.main(["--root", str(root)]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_reports_scan_and_manifest_problems(synthetic_root, tmp_path, capsys):
    root = Path(shutil.copytree(synthetic_root, tmp_path / "voc"))
    write_manifest(root)
    victim = read_split(root, "val")[0]
    png = root / "SegmentationClassAug" / f"{victim}.png"
    png.write_bytes(png.read_bytes() + b"\0")
    jpg = root / "JPEGImages" / f"{read_split(root, 'train')[0]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:300])
    assert verify.main(["--root", str(root), "--splits", "train", "val"]) == 1
    err = capsys.readouterr().err
    assert f"{png}: sha256 differs" in err
    assert str(jpg) in err and "truncated" in err
    differs = "sha256 differs from MANIFEST.sha256 (modified or corrupt; restore it)"
    assert verify.check_manifest(root) == [f"{jpg}: {differs}", f"{png}: {differs}"]


def test_verify_uses_env_root(synthetic_root, monkeypatch, capsys):
    monkeypatch.setenv("SIPE_DATA_ROOT", str(synthetic_root))
    assert verify.main(["--splits", "val"]) == 0
    monkeypatch.setenv("SIPE_DATA_ROOT", str(synthetic_root / "missing"))
    assert verify.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: data root {synthetic_root / 'missing'} does not exist") and err.count("\n") == 1


# --- nothing rewritten in place ----------------------------------------------------------------------

def voc_archive(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A tar of VOCdevkit/VOC2012/<name> = bytes, in out/ under the VOC file name; VOC2012's md5 patched to it."""
    src = tmp_path / "src"
    for name, data in files.items():
        path = src / "VOCdevkit" / "VOC2012" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    archive = tmp_path / "out" / download_voc.VOC2012.filename
    archive.parent.mkdir(exist_ok=True)
    with tarfile.open(archive, "w") as tar:
        tar.add(src / "VOCdevkit", arcname="VOCdevkit")
    return archive


ARCHIVE_FILES = {f"JPEGImages/{i}.jpg": bytes([i]) * 1000 for i in range(6)} | {"ImageSets/Segmentation/train.txt": b"0\n1\n"}


@pytest.fixture
def offline_voc(tmp_path, monkeypatch, no_network):
    archive = voc_archive(tmp_path, ARCHIVE_FILES)
    monkeypatch.setitem(download_voc.ARCHIVES, "voc2012", replace(download_voc.VOC2012, md5=download_voc.file_md5(archive)))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("no download expected"))
    return archive


def extracted_files(out: Path) -> dict[str, bytes]:
    root = out / "VOCdevkit" / "VOC2012"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_interrupted_extraction_leaves_nothing_in_place_and_is_redone(offline_voc, monkeypatch, capsys):
    out = offline_voc.parent
    real_extractall = tarfile.TarFile.extractall

    def interrupted(self, path=".", members=None, **kwargs):
        real_extractall(self, path, members=self.getmembers()[:4], **kwargs)  # a few files, then the power goes
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_voc.main(["--out", str(out), "--only", "voc2012"])
    assert not (out / "VOCdevkit").exists(), "a half-extracted archive reached its final place"
    assert not download_voc.marker_path(download_voc.VOC2012, out).exists()

    monkeypatch.setattr(tarfile.TarFile, "extractall", real_extractall)
    assert download_voc.main(["--out", str(out), "--only", "voc2012"]) == 0
    assert extracted_files(out) == ARCHIVE_FILES
    assert download_voc.marker_path(download_voc.VOC2012, out).is_file()
    assert sorted(p.name for p in out.iterdir()) == [".voc2012.extracted", "VOCdevkit", download_voc.VOC2012.filename]

    def no_second_extraction(*args, **kwargs):
        raise AssertionError("extracted again although the marker says it is complete")

    monkeypatch.setattr(download_voc, "extract", no_second_extraction)
    capsys.readouterr()
    assert download_voc.main(["--out", str(out), "--only", "voc2012"]) == 0
    assert "already extracted" in capsys.readouterr().out


def test_half_extracted_folder_without_marker_is_extracted_again(offline_voc, capsys):
    """A folder left by an extraction that stopped (truncated file, missing files, no marker) is completed;
    files that are not in the archive (e.g. SegmentationClassAug made by convert_sbd) are kept."""
    out = offline_voc.parent
    voc2012 = out / "VOCdevkit" / "VOC2012"
    (voc2012 / "JPEGImages").mkdir(parents=True)
    (voc2012 / "JPEGImages" / "0.jpg").write_bytes(b"\0" * 10)  # truncated
    (voc2012 / "SegmentationClassAug").mkdir()
    (voc2012 / "SegmentationClassAug" / "0.png").write_bytes(b"derived")
    assert download_voc.main(["--out", str(out), "--only", "voc2012"]) == 0
    assert "did not finish; extracting again" in capsys.readouterr().out
    assert extracted_files(out) == ARCHIVE_FILES | {"SegmentationClassAug/0.png": b"derived"}
    assert download_voc.marker_path(download_voc.VOC2012, out).is_file()
    assert not list(out.glob(".extracting-*"))


def fail_rename(monkeypatch) -> None:
    """Make the final rename of every atomic write fail, as if the process died just before it."""
    def boom(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(runtime.os, "replace", boom)


def test_data_prep_outputs_are_written_atomically(voc_sbd, tmp_path, monkeypatch):
    """Masks, split lists and labels reach their path whole or not at all: a crash before the rename
    leaves the previous file untouched and no temporary file behind."""
    voc_root, sbd, _ = voc_sbd
    convert_sbd.convert(voc_root, sbd)
    make_cls_labels.save_cls_labels({"s1": np.eye(20, dtype=np.float32)[2]}, voc_root / voc.LABELS_FILE)
    before = {p: p.read_bytes() for p in voc_root.rglob("*") if p.is_file()}
    fail_rename(monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        save_mask(voc_root / "SegmentationClassAug" / "s1.png", np.zeros((2, 3), dtype=np.uint8))
    (voc_root / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    del before[voc_root / "ImageSets" / "Segmentation" / "train_aug.txt"]
    with pytest.raises(OSError, match="simulated crash"):
        convert_sbd.convert(voc_root, sbd)
    with pytest.raises(OSError, match="simulated crash"):
        make_cls_labels.save_cls_labels({"a": np.zeros(20, np.float32)}, voc_root / voc.LABELS_FILE)
    after = {p: p.read_bytes() for p in voc_root.rglob("*") if p.is_file()}
    assert after == before
    assert np.flatnonzero(load_cls_labels(voc_root)["s1"]).tolist() == [2]
    with pytest.raises(OSError, match="simulated crash"):
        make_synthetic.main(["--out", str(tmp_path / "syn"), "--n-images", "2", "--height", "32", "--width", "32"])
    assert not [p for p in (tmp_path / "syn").rglob("*") if p.is_file()]


# --- check_root.py: the layout check that runs before the install ------------------------------------

def test_check_root_names_agree_with_the_package():
    assert (check_root.IMAGE_DIR, check_root.MASK_DIR, check_root.SPLIT_DIR, check_root.LABELS_FILE) == (
        voc.IMAGE_DIR, voc.MASK_DIR, voc.SPLIT_DIR, voc.LABELS_FILE)


def run_check_root(*args: str) -> subprocess.CompletedProcess:
    """The script with an isolated interpreter without site-packages: proves it needs only the standard library."""
    return subprocess.run([sys.executable, "-I", "-S", str(REPO / "data_prep" / "check_root.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_check_root_accepts_a_good_root_with_the_standard_library_only(synthetic_root):
    proc = run_check_root(str(synthetic_root), "--splits", "train_aug", "train", "val")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"data root {synthetic_root}: layout ok (train_aug 8 ids, train 4 ids, val 4 ids)"


@pytest.mark.parametrize("damage, named", [
    ("rm ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/train.txt not found"),
    ("empty ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/train.txt is empty"),
    ("rm cls_labels_voc.npy", "cls_labels_voc.npy not found"),
    ("empty cls_labels_voc.npy", "cls_labels_voc.npy is not a .npy file"),
    ("rm JPEGImages/synth_0003.jpg", "JPEGImages/synth_0003.jpg"),
    ("rmdir SegmentationClassAug", "SegmentationClassAug not found"),
])
def test_check_root_names_the_broken_file(synthetic_root, tmp_path, damage, named):
    root = Path(shutil.copytree(synthetic_root, tmp_path / "voc"))
    action, rel = damage.split()
    {"rm": os.remove, "empty": lambda p: Path(p).write_bytes(b""), "rmdir": shutil.rmtree}[action](root / rel)
    proc = run_check_root(str(root))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert named in proc.stderr
    assert run_check_root(str(tmp_path / "absent")).stderr.startswith(f"error: data root {tmp_path / 'absent'} is not a folder")


def test_download_errors_are_sipe_errors():
    assert issubclass(download_voc.DownloadError, SipeError) and issubclass(download_voc.ChecksumError, SipeError)
