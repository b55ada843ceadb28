"""What a reader needs to cite and reuse the study: CITATION.cff (valid CFF 1.2.0, naming the SIPE paper) and the
MIT license, stated alike in LICENSE, pyproject.toml, CITATION.cff and the README."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The Citation File Format's schema for 1.2.0 (CC-BY-4.0), as the PyPI package cffconvert 2.0.0 ships it
# (cffconvert/schemas/1.2.0/schema.json).
CFF_SCHEMA = REPO / "tests" / "data" / "cff-schema-1.2.0.json"
SIPE_AUTHORS = [("Qi", "Chen"), ("Lingxiao", "Yang"), ("Jianhuang", "Lai"), ("Xiaohua", "Xie")]
SIPE_TITLE = "Self-supervised Image-specific Prototype Exploration for Weakly Supervised Semantic Segmentation"


def citation() -> dict:
    return yaml.safe_load((REPO / "CITATION.cff").read_text())


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def check_cff(cff: dict) -> None:
    """Raise jsonschema.ValidationError unless cff is valid Citation File Format 1.2.0."""
    jsonschema.validate(cff, json.loads(CFF_SCHEMA.read_text()), format_checker=jsonschema.FormatChecker())


def test_citation_is_valid_cff_1_2_0_for_the_software():
    cff = citation()
    check_cff(cff)
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == project()["version"]


@pytest.mark.parametrize("breaks", [{"authors": []}, {"cff-version": "1.1.0"}, {"references": [{"title": "x"}]}])
def test_cff_check_rejects_a_broken_citation(breaks):
    with pytest.raises(jsonschema.ValidationError):
        check_cff({**citation(), **breaks})


def test_citation_references_the_sipe_paper():
    (paper,) = [r for r in citation()["references"] if r["title"] == SIPE_TITLE]
    assert paper["type"] == "conference-paper"
    assert [(a["given-names"], a["family-names"]) for a in paper["authors"]] == SIPE_AUTHORS
    assert (paper["year"], paper["start"], paper["end"]) == (2022, 4288, 4298)
    assert "CVPR" in paper["conference"]["name"]


def test_license_is_mit_everywhere():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Permission is hereby granted, free of charge" in text
    assert project()["license"] == citation()["license"] == "MIT"
    assert project()["license-files"] == ["LICENSE"]
    readme = (REPO / "README.md").read_text()
    assert "MIT license (`LICENSE`)" in readme and "CITATION.cff" in readme
