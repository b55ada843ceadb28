"""The figure inputs kept beside the results (Figs. 1, 3, 5, 7) give the chapters the same figures and numbers as
the weights and maps they were computed from, and stand in for the work folder."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sipe.stages.evaluation import load_map
from sipe.study import chapters, figinputs, figures, tables
from sipe.study.pipeline import Unit
from sipe.study.plan import run_plan

pytestmark = pytest.mark.slow  # trains two smoke units


@pytest.fixture(scope="module")
def computed(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> chapters.Study:
    """A smoke study with one seed whose CAM and SIPE units are computed and whose figure inputs are written."""
    tmp = tmp_path_factory.mktemp("figinputs")
    study = chapters.setup("smoke", str(synthetic_root), str(tmp / "work"), seed=0, device="cpu",
                           results_dir=str(tmp / "results"), compute=False)
    run_plan(study.cfg, study.work_dir, study.results_dir, [Unit("cam", 0), Unit("sipe", 0)], progress=False)
    assert figinputs.write_all(study) == {name: "written" for name in figinputs.FIGURES}
    assert figinputs.write_all(study) == {name: "reused" for name in figinputs.FIGURES}
    return study


def same_figure_numbers(name: str, kept, fresh) -> None:
    if name == "fig1":
        pd.testing.assert_series_equal(kept.example, fresh.example, check_names=False)
        cls = int(fresh.example["class_index"])
        (_, a), (_, b) = figures.tsne_figure(kept.sample, cls), figures.tsne_figure(fresh.sample, cls)
        pd.testing.assert_frame_equal(a, b)
        assert a.attrs == b.attrs
        assert kept.per_seed.keys() == fresh.per_seed.keys()
        for seed in fresh.per_seed:
            pd.testing.assert_frame_equal(kept.per_seed[seed], fresh.per_seed[seed], check_dtype=False)
        pd.testing.assert_frame_equal(tables.fig1_table(kept.per_seed, "train")[0],
                                      tables.fig1_table(fresh.per_seed, "train")[0])
        maps = {"cam": (kept.maps, fresh.maps)}
        ids = [str(fresh.example["id"])]
    elif name == "fig3":
        pd.testing.assert_series_equal(kept.example, fresh.example, check_names=False)
        pd.testing.assert_frame_equal(figures.structure_figure(kept.sample)[1], figures.structure_figure(fresh.sample)[1])
        for field in ("pixels", "iou", "structure", "cams", "image"):
            np.testing.assert_array_equal(getattr(kept.sample, field), getattr(fresh.sample, field))
        return
    else:
        pd.testing.assert_frame_equal(kept.examples, fresh.examples)
        maps = {v: (kept.maps[v], fresh.maps[v]) for v in fresh.maps}
        ids = fresh.examples["id"].tolist()
    for kept_dir, fresh_dir in maps.values():
        for image_id in ids:
            for key in ("cam", "is_cam"):
                a, b = load_map(kept_dir, image_id, key), load_map(fresh_dir, image_id, key)
                np.testing.assert_array_equal(a[0], b[0])
                np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("name", figinputs.FIGURES)
def test_kept_inputs_give_the_numbers_of_the_weights(computed: chapters.Study, name: str) -> None:
    kept = computed.figure_inputs(name)
    assert figinputs.current_record(computed, name, figinputs.parameters(name)) is not None
    fresh = figinputs.COMPUTE[name](computed, **figinputs.parameters(name))
    same_figure_numbers(name, kept, fresh)


def test_kept_inputs_stand_in_for_the_work_folder(computed: chapters.Study, tmp_path: Path) -> None:
    results_dir = Path(shutil.copytree(computed.results_dir, tmp_path / "results"))
    clone = chapters.Study(computed.cfg, tmp_path / "empty-work", results_dir, compute=False)
    for name in figinputs.FIGURES:
        kept = clone.figure_inputs(name)
        same_figure_numbers(name, kept, figinputs.COMPUTE[name](computed, **figinputs.parameters(name)))
    with pytest.raises(figinputs.FigureInputsError, match=r"fig1\.json\) is not current.*figure-inputs --profile smoke"):
        clone.figure_inputs("fig1", example_seed=1)
    (results_dir / "figures" / "fig3.npz").write_bytes(b"damaged")
    with pytest.raises(figinputs.FigureInputsError, match=r"fig3\.json\) is not current"):
        clone.figure_inputs("fig3")
    shutil.rmtree(results_dir / "figures")
    with pytest.raises(figinputs.FigureInputsError, match=r"fig5\.json\) is missing"):
        clone.figure_inputs("fig5")


def test_parameters_are_checked() -> None:
    assert figinputs.parameters("fig1", n_images=5) == {"example_seed": 0, "n_images": 5}
    with pytest.raises(ValueError, match="unknown parameters"):
        figinputs.parameters("fig3", n_images=5)
    with pytest.raises(ValueError, match="figures with kept inputs"):
        figinputs.parameters("fig2")
