import numpy as np
import pytest

from sipe.results import CLAIMS, claims, compare_table, load_paper_results, paper_value


def test_load_paper_results_columns_and_values():
    df = load_paper_results()
    assert list(df.columns) == ["table", "row", "setting", "metric", "value", "note"]
    assert df["value"].dtype == float
    assert set(df.loc[df["table"] == "table4", "row"]) == {"CAM", "CAM + IPE", "CAM + IPE + GSC"}
    assert not df[["table", "row", "metric"]].duplicated().any()


def test_paper_value_and_errors():
    assert paper_value("table1", "SIPE", "loc_maps_miou") == 58.6
    assert paper_value("table1", "SIPE", "loc_maps_crf_miou") == 64.7
    assert paper_value("table5", "Hierarchical w/ BPM", "threshold_miou") == 57.6
    with pytest.raises(KeyError, match="CAM \\+ IPE \\+ GSC"):
        paper_value("table4", "CAM + GSC", "loc_maps_miou")
    with pytest.raises(KeyError, match="valid metrics"):
        paper_value("table4", "CAM", "val_miou")
    with pytest.raises(KeyError, match="valid tables"):
        paper_value("table9", "SIPE", "loc_maps_miou")


def test_compare_table_deltas():
    note = "subset profile, EfficientNet-Lite0, 437/1464 VOC train images"
    out = compare_table("table1", {"SIPE": {"loc_maps_miou": 55.0, "loc_maps_crf_miou": 60.2}}, note)
    assert list(out.columns) == ["row", "metric", "paper", "ours", "delta", "setting"]
    sipe = out[out["row"] == "SIPE"].set_index("metric")
    assert sipe.loc["loc_maps_miou", "delta"] == pytest.approx(55.0 - 58.6)
    assert sipe.loc["loc_maps_crf_miou", "delta"] == pytest.approx(60.2 - 64.7)
    others = out[out["row"] != "SIPE"]
    assert len(others) == 14 and others["ours"].isna().all() and others["delta"].isna().all()
    assert (out["setting"] == note).all()
    with pytest.raises(KeyError, match="valid rows"):
        compare_table("table1", {"SIPE (ours)": {"loc_maps_miou": 1.0}}, note)


def test_claims_hold_in_the_papers_own_numbers():
    out = claims({})
    assert len(out) == len(CLAIMS)
    in_paper = np.array([c.in_paper for c in CLAIMS])
    assert (out["paper_delta"][in_paper] > 0).all() and out["paper_delta"][~in_paper].isna().all()
    assert out["holds"].isna().all()
    assert out["paper_delta"][in_paper].tolist() == pytest.approx([3.1, 5.4, 1.0, 5.3, 6.1])
    assert [c.table for c in CLAIMS if not c.in_paper] == ["pseudo_labels", "pseudo_labels"]


def test_claims_on_made_up_numbers():
    ours = {
        "table4": {"CAM": {"loc_maps_miou": 40.0}, "CAM + IPE": {"loc_maps_miou": 42.5},
                   "CAM + IPE + GSC": {"loc_maps_miou": 41.0}},
        "table5": {"Hierarchical w/ BPM": {"threshold_miou": 45.0, "estimated_miou": np.nan}},
        "table1": {"SIPE": {"loc_maps_miou": 50.0, "loc_maps_crf_miou": 53.0}},
    }
    ours["pseudo_labels"] = {"SIPE": {"maps_miou": 50.0, "rw_miou": 55.0}, "CAM": {"rw_miou": 56.0}}
    out = claims(ours).set_index("claim")
    ipe, gsc, bpm, seeds, crf, rw, vs_cam = (out.iloc[i] for i in range(7))
    assert rw["holds"] == True and rw["our_delta"] == pytest.approx(5.0) and np.isnan(rw["paper_delta"])  # noqa: E712
    assert vs_cam["holds"] == False and vs_cam["our_delta"] == pytest.approx(-1.0)  # noqa: E712
    assert ipe["holds"] == True and ipe["our_delta"] == pytest.approx(2.5)  # noqa: E712
    assert gsc["holds"] == False and gsc["our_delta"] == pytest.approx(-1.5)  # noqa: E712
    assert bpm["holds"] is None and np.isnan(bpm["our_delta"])
    assert seeds["holds"] is None
    assert crf["holds"] == True and crf["our_delta"] == pytest.approx(3.0)  # noqa: E712


def test_styled_table_is_wide_rounded_and_captioned():
    from sipe.results import compare_table, styled

    table = compare_table("table4", {"CAM": {"loc_maps_miou": 40.123}}, "profile x")
    html = styled(table).to_html()
    data = styled(table).data
    assert list(data.index) == ["CAM", "CAM + IPE", "CAM + IPE + GSC"]
    assert data.loc["CAM", ("loc_maps_miou", "ours")] == 40.123
    assert data.loc["CAM", ("loc_maps_miou", "delta")] == pytest.approx(40.123 - 50.1)
    assert "40.1" in html and "–" in html and "Ours: profile x" in html
