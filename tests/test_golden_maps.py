"""A fixed model's maps and training outputs stay what they were before the stage code was refactored.

`tests/data/golden_maps.npz` was written by `python tests/test_golden_maps.py` at revision 0891ecf (before
the "one path" refactor). The test recomputes the same quantities with the current code: the multi-scale
maps of two synthetic images for every seed method, and one training forward pass (CAM, seeds, IS-CAM,
losses). A refactor that changes any of them fails here; a deliberate change of the method regenerates
the file and says why in its commit.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from sipe.method import ipe, losses
from sipe.infra.config import ModelConfig
from sipe.data.datasets import InferenceDataset
from sipe.data.synthetic import make_synthetic_voc
from sipe.method.backbones import BACKBONES
from sipe.method.network import build_model

GOLDEN = Path(__file__).parent / "data" / "golden_maps.npz"
METHODS = ("structure", "argmax", "threshold:0.3")
SPLITS = {"train_aug": [0, 1, 2, 3], "train": [0, 1], "val": [2, 3]}


def compute(root: Path) -> dict[str, np.ndarray]:
    """Maps of the first two `train` images and one training forward pass of a seeded, untrained model."""
    from sipe.stages.maps import infer_image, kept_channels, seed_method_key

    torch.manual_seed(0)
    mcfg = ModelConfig(backbone="efficientnet_lite0", pretrained=False, semantic_layer="conv_head", bg_scale=1.0)
    model = build_model(mcfg).eval()
    spec = BACKBONES[mcfg.backbone]
    ds = InferenceDataset(root, "train", (1.0, 0.5), spec.mean, spec.std)
    out: dict[str, np.ndarray] = {}
    for i in range(2):
        item = ds[i]
        maps = infer_image(model, item["images"], item["label"], tuple(item["size"]), mcfg, METHODS)
        for m in METHODS:
            out[f"img{i}/{seed_method_key(m)}"] = maps[seed_method_key(m)].numpy()
        out[f"img{i}/cam"] = maps["cam"].numpy()
        out[f"img{i}/keys"] = kept_channels(item["label"])
    torch.manual_seed(1)
    img = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([[1.0] + [0.0] * 19, [0.0, 1.0, 1.0] + [0.0] * 17])
    valid = torch.ones(2, 64, 64)
    valid[1, :, 48:] = 0
    with torch.no_grad():
        res = model(img, ipe.label_mask(labels, valid), with_ipe=True)
    for key in ("score", "cam", "seeds", "prototypes", "is_cam"):
        out[f"train/{key}"] = res[key].numpy()
    out["train/loss_gsc"] = losses.gsc_loss(res["cam"], res["is_cam"]).numpy()
    out["train/loss_cls"] = losses.classification_loss(res["score"], labels).numpy()
    return out


def test_maps_and_training_outputs_match_the_golden_file(tmp_path: Path) -> None:
    root = make_synthetic_voc(tmp_path / "voc", n_images=4, size=(64, 80), seed=3, splits=SPLITS)
    got = compute(root)
    want = dict(np.load(GOLDEN))
    for key, value in want.items():
        if "@" in key:
            # Recorded as IS-CAM maps (C,H,W); the maps stage now stores their estimated-background labels.
            image, method = key.split("/")[0], key.split("@", 1)[1]
            keys = got[f"{image}/keys"]
            expected = keys[value[keys].argmax(0)]
            np.testing.assert_array_equal(got[f"{image}/labels@{method}"], expected, err_msg=key)
        elif key.startswith("img") and not key.endswith("/keys"):
            # Recorded over all C channels; the maps stage now keeps background + present classes only.
            keys = got[f"{key.split('/')[0]}/keys"]
            np.testing.assert_allclose(got[key], value[keys], rtol=1e-4, atol=2e-5, err_msg=key)
        else:
            np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=2e-5, err_msg=key)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        data = compute(make_synthetic_voc(Path(d) / "voc", n_images=4, size=(64, 80), seed=3, splits=SPLITS))
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **data)
    print(f"wrote {GOLDEN} ({len(data)} arrays)", file=sys.stderr)
