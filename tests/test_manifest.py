from __future__ import annotations

import pytest

from appliance.errors import ManifestError, UnknownNameError
from appliance.manifest import Catalog
from tests.conftest import REPO, ManifestDir

SERVE = """
serve:
  served_model_name: X
resources:
  weight_bytes: 1000
"""


def test_every_shipped_manifest_and_profile_is_valid() -> None:
    catalog = Catalog(REPO / "manifests")
    assert catalog.check_all() == []
    assert {"paddleocr-vl", "dots-ocr", "qwen3-vl-2b", "qwen3-vl-8b-fp8", "pp-doclayoutv3"} <= set(
        catalog.model_names()
    )
    assert {"tiny-cpu", "gpu-12gb", "gpu-24gb", "gpu-48gb", "gpu-80gb"} <= set(catalog.profile_names())


def test_shipped_paddleocr_vl_carries_its_layout_model() -> None:
    catalog = Catalog(REPO / "manifests")
    v1 = catalog.model("paddleocr-vl")
    assert v1.serve and v1.serve.served_model_name == "PaddleOCR-VL-0.9B"
    assert v1.layout and v1.layout.subdir == "PP-DocLayoutV2" and v1.layout.pipeline_version == "v1"
    names = [m.name for m in catalog.profile_models("gpu-80gb")]
    assert "pp-doclayoutv3" in names  # pulled in by paddleocr-vl-1-6's layout reference


def test_typo_names_file_and_field(manifests: ManifestDir) -> None:
    path = manifests.model("m", "engine: qwen3-vl\nsource: hf:o/r\nrevision: main\nservee: {}\n" + SERVE)
    with pytest.raises(ManifestError) as err:
        manifests.catalog().model("m")
    assert str(path) in str(err.value) and "servee" in str(err.value)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ("engine: qwen3-vl\nsource: ftp:x\nrevision: main\n" + SERVE, "source", "hf:org/repo"),
        ("engine: qwen3-vl\nsource: hf:not-a-repo-id\nrevision: main\n" + SERVE, "source", "owner/name"),
        ("engine: qwen3-vl\nsource: hf:o/r\n" + SERVE, "(top level)", "revision"),
        ("engine: nope\nsource: hf:o/r\nrevision: main\n" + SERVE, "engine", "paddleocr-vl"),
        ("engine: qwen3-vl\nsource: hf:o/r\nrevision: main\nresources: {weight_bytes: 1}\n", "(top level)", "serve"),
    ],
)
def test_invalid_manifest_errors(manifests: ManifestDir, body: str, field: str, words: str) -> None:
    manifests.model("m", body)
    with pytest.raises(ManifestError) as err:
        manifests.catalog().model("m")
    assert field in str(err.value) and words in str(err.value)


def test_name_must_match_file_and_have_no_dot(manifests: ManifestDir) -> None:
    path = manifests.root / "models" / "a.yaml"
    path.write_text("name: b\nengine: qwen3-vl\nsource: hf:o/r\nrevision: main\n" + SERVE)
    with pytest.raises(ManifestError, match="must equal the file name"):
        manifests.catalog().model("a")
    (manifests.root / "models" / "dots.ocr.yaml").write_text("name: dots.ocr\n")
    with pytest.raises(UnknownNameError):
        manifests.catalog().model("dots.ocr")


def test_profile_validation(manifests: ManifestDir) -> None:
    manifests.model("m", "engine: qwen3-vl\nsource: hf:o/r\nrevision: main\n" + SERVE)
    manifests.profile("p", "target: {device: cpu}\nbase_image: x\nmodels: [{model: m}, {model: ghost}]\n")
    with pytest.raises(ManifestError, match="no manifest for ghost"):
        manifests.catalog().profile("p")
    manifests.profile("q", "target: {device: cuda}\nbase_image: x\nmodels: [{model: m}]\n")
    with pytest.raises(ManifestError, match="gpu_memory_gib"):
        manifests.catalog().profile("q")
    manifests.profile("r", "target: {device: cpu}\nbase_image: x\nmodels: [{model: m}, {model: m}]\n")
    with pytest.raises(ManifestError, match="listed twice"):
        manifests.catalog().profile("r")


def test_unknown_profile_lists_known(manifests: ManifestDir) -> None:
    manifests.profile("only", "target: {device: cpu}\nbase_image: x\nmodels: [{model: m}]\n")
    with pytest.raises(UnknownNameError, match="known: only"):
        manifests.catalog().profile("nope")
