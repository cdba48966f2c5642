"""Head postprocessing, label order and the shipped registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.errors import UnknownModel
from inference.heads import apply_head, predicted_index
from inference.registry import Calibration, Head, ModelSpec, Registry

REPO = Path(__file__).resolve().parents[1]


def spec(head: str, classes: list[str], **kw: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": "m",
            "display_name": "M",
            "modality": "x",
            "backend": "keras_image",
            "head": head,
            "classes": [{"id": c, "name": c} for c in classes],
            **kw,
        }
    )


def test_softmax_head_keeps_order_and_sums_to_one() -> None:
    raw = np.array([[0.1, 0.6, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]])
    p = apply_head(raw, Head.SOFTMAX)
    np.testing.assert_allclose(p, raw, atol=1e-6)
    s = spec("softmax", ["glioma", "meningioma", "notumor", "pituitary"])
    assert [s.class_ids[i] for i in predicted_index(p, s)] == ["meningioma", "glioma"]


def test_softmax_temperature_softens_without_changing_argmax() -> None:
    raw = np.array([[0.9, 0.05, 0.05]])
    hot = apply_head(raw, Head.SOFTMAX, Calibration(temperature=2.0))
    assert hot[0, 0] < 0.9
    assert hot.argmax() == 0
    np.testing.assert_allclose(hot.sum(), 1.0)
    # T=2 on log-probs is the square root of the odds: 0.9/0.05 = 18 -> sqrt(18)
    np.testing.assert_allclose(hot[0, 0] / hot[0, 1], np.sqrt(18.0), rtol=1e-6)


def test_single_sigmoid_is_p_of_second_class_not_argmax() -> None:
    # The original bug: argmax over one sigmoid output always said class 0 ("normal").
    s = spec("sigmoid_single", ["NORMAL", "PNEUMONIA"], positive_class="PNEUMONIA")
    raw = np.array([[0.93], [0.2], [0.5]])
    p = apply_head(raw, Head.SIGMOID_SINGLE)
    np.testing.assert_allclose(p, [[0.07, 0.93], [0.8, 0.2], [0.5, 0.5]], atol=1e-6)
    assert [s.class_ids[i] for i in predicted_index(p, s)] == ["PNEUMONIA", "NORMAL", "PNEUMONIA"]


def test_single_sigmoid_operating_threshold_moves_the_decision() -> None:
    s = spec("sigmoid_single", ["NORMAL", "PNEUMONIA"], threshold=0.8)
    p = apply_head(np.array([[0.7], [0.85]]), Head.SIGMOID_SINGLE)
    assert [s.class_ids[i] for i in predicted_index(p, s)] == ["NORMAL", "PNEUMONIA"]


def test_single_sigmoid_platt_scaling() -> None:
    p = apply_head(np.array([[0.5]]), Head.SIGMOID_SINGLE, Calibration(platt_a=1.0, platt_b=1.0))
    np.testing.assert_allclose(p[0, 1], 1 / (1 + np.exp(-1.0)), rtol=1e-6)


def test_multi_sigmoid_outputs_are_independent() -> None:
    raw = np.array([[0.9, 0.7], [0.1, 0.3]])
    p = apply_head(raw, Head.SIGMOID_MULTI)
    np.testing.assert_allclose(p, raw, atol=1e-6)  # identity calibration: unchanged, not renormalised
    assert not np.allclose(p.sum(axis=1), 1.0)
    s = spec("sigmoid_multi", ["Monkeypox", "Others"])
    assert [s.class_ids[i] for i in predicted_index(p, s)] == ["Monkeypox", "Others"]


def test_single_sigmoid_rejects_wide_output() -> None:
    with pytest.raises(ValueError, match="one output"):
        apply_head(np.array([[0.1, 0.9]]), Head.SIGMOID_SINGLE)


def test_spec_validation_rejects_inconsistent_heads() -> None:
    with pytest.raises(ValueError, match="exactly 2 classes"):
        spec("sigmoid_single", ["a", "b", "c"])
    with pytest.raises(ValueError, match="positive_class"):
        spec("sigmoid_single", ["a", "b"], positive_class="z")
    with pytest.raises(ValueError, match="duplicate"):
        spec("softmax", ["a", "a"])


def test_shipped_registry_matches_the_reference() -> None:
    reg = Registry.from_yaml(REPO / "assets" / "models.yaml")
    assert reg.ids == ["lung_colon", "monkeypox", "brain_tumor", "chest_xray", "palm", "conjunctiva_anemia", "chat"]
    assert reg["lung_colon"].class_ids == ["colon_aca", "colon_n", "lung_aca", "lung_n", "lung_scc"]
    assert reg["lung_colon"].head is Head.SOFTMAX
    # brain labels were reversed in the original; monkeypox ones swapped: pin the right order.
    assert reg["brain_tumor"].class_ids == ["glioma", "meningioma", "notumor", "pituitary"]
    assert reg["monkeypox"].class_ids == ["Monkeypox", "Others"]
    assert reg["monkeypox"].head is Head.SIGMOID_MULTI
    assert reg["chest_xray"].class_ids == ["NORMAL", "PNEUMONIA"]
    assert reg["chest_xray"].head is Head.SIGMOID_SINGLE
    assert reg["chest_xray"].n_outputs == 1
    assert reg["palm"].positive_class == "AnemicP"
    assert reg["palm"].class_ids[1] == "AnemicP"
    assert reg["chat"].head is Head.GENERATIVE
    for s in reg.image_models():
        assert s.weights is not None


def test_class_ids_are_the_dataset_folder_names() -> None:
    datasets = REPO.parent / "shared" / "datasets"
    if not datasets.exists():
        pytest.skip("../shared/datasets is not present on this machine")
    reg = Registry.from_yaml(REPO / "assets" / "models.yaml")
    mapping = {
        "lung_colon": "lung_colon",
        "monkeypox": "monkeypox",
        "brain_tumor": "brain_mri",
        "chest_xray": "chest_xray",
    }
    for model_id, folder in mapping.items():
        folders = sorted(p.name for p in (datasets / folder / "train").iterdir() if p.is_dir())
        assert reg[model_id].class_ids == folders


def test_unknown_model_error_lists_known_ids() -> None:
    reg = Registry.from_yaml(REPO / "assets" / "models.yaml")
    with pytest.raises(UnknownModel, match=r"unknown model 'nope'; known: \['brain_tumor'"):
        reg["nope"]
