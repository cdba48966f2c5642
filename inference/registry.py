"""Model specs and the registry read from ``assets/models.yaml``.

A spec is everything the rest of the system needs to know about a model: which backend
runs it, its classes in output-index order, its head, its input, where its weights live
and what its card says. Tabs, the REST API and the manager are all driven from here, so
adding a model means adding a spec.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.errors import UnknownModel


class Head(StrEnum):
    """How raw model outputs become class probabilities."""

    SOFTMAX = "softmax"  # N mutually exclusive classes, outputs sum to 1
    SIGMOID_MULTI = "sigmoid_multi"  # one independent sigmoid per class (outputs need not sum to 1)
    SIGMOID_SINGLE = "sigmoid_single"  # one output = P(classes[1]); classes[0] is its complement
    BINARY_CLASSIFIER = "binary_classifier"  # a non-neural binary model (palm XGBoost): P(positive)
    GENERATIVE = "generative"  # text generation, no classes


class ClassSpec(BaseModel):
    """One output class: ``id`` is the dataset folder name, ``name`` what people read."""

    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    description: str = ""


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(224, ge=8, le=2048)
    channels: Literal[1, 3] = 3
    # x = pixels * scale + offset (the original models: scale 1/255, offset 0)
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    # "foreground": crop to the bounding square of the non-dark region first; "foreground_box":
    # to its bounding box, stretched to the square input (inference.framing)
    crop: Literal["none", "foreground", "foreground_box"] = "none"
    # pass an upload's alpha channel as a 4th channel (HxWx4) when it has one: for models that
    # read a segmentation from it (the conjunctiva crop); the others always get RGB
    keep_alpha: bool = False


class Calibration(BaseModel):
    """Post-hoc calibration fitted on validation data.

    Softmax heads use a temperature ``T`` on log-probabilities; sigmoid heads use Platt
    scaling ``sigmoid(a * logit + b)``. Identity by default.
    """

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, gt=0)
    platt_a: float = 1.0
    platt_b: float = 0.0
    fitted_on: str | None = None


class WeightsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str | None = None


class ModelSpec(BaseModel):
    """Everything the system knows about one model."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    display_name: str
    modality: str
    backend: Literal["keras_image", "xgboost_palm", "xgboost_conjunctiva", "chat"]
    head: Head
    classes: list[ClassSpec] = Field(default_factory=list)
    positive_class: str | None = None
    input: InputSpec = Field(default_factory=InputSpec)
    weights: WeightsSpec | None = None
    version: str = "0.0.0"
    gradcam_layer: str | None = None
    gradcam_min_grid: int = Field(1, ge=1, description="auto-pick the last 4-D map at least this wide")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="operating threshold of binary heads")
    calibration: Calibration = Field(default_factory=Calibration)
    card: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    # The least the model's own evidence must show to be presented as a working model
    # (metric -> value; ``ece`` is a ceiling). ``evidence`` names that evidence: ``val`` =
    # ``card.evaluation``, ``cv`` = ``card.cv_evaluation`` (patient-grouped CV). Below it the
    # model is experimental: served only with DOCTORAI_EXPERIMENTAL_MODELS (ModelManager).
    floor: dict[str, float] = Field(default_factory=dict)
    evidence: Literal["val", "cv"] = "val"

    @model_validator(mode="after")
    def _check_head(self) -> ModelSpec:
        n = len(self.classes)
        if self.head in (Head.SIGMOID_SINGLE, Head.BINARY_CLASSIFIER) and n != 2:
            raise ValueError(f"{self.id}: a {self.head.value} head needs exactly 2 classes, got {n}")
        if self.head in (Head.SOFTMAX, Head.SIGMOID_MULTI) and n < 2:
            raise ValueError(f"{self.id}: a {self.head.value} head needs at least 2 classes")
        if self.positive_class is not None and self.positive_class not in self.class_ids:
            raise ValueError(f"{self.id}: positive_class {self.positive_class!r} is not a class")
        ids = self.class_ids
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.id}: duplicate class ids")
        return self

    @property
    def class_ids(self) -> list[str]:
        return [c.id for c in self.classes]

    @property
    def class_names(self) -> dict[str, str]:
        return {c.id: c.name for c in self.classes}

    @property
    def is_image_model(self) -> bool:
        return self.backend in ("keras_image", "xgboost_palm", "xgboost_conjunctiva")

    @property
    def explains_by_features(self) -> bool:
        """True for the XGBoost models: their explanation is a feature-contributions chart, not Grad-CAM."""
        return self.backend in ("xgboost_palm", "xgboost_conjunctiva")

    @property
    def n_outputs(self) -> int:
        """Width of the raw model output."""
        return 1 if self.head in (Head.SIGMOID_SINGLE, Head.BINARY_CLASSIFIER) else len(self.classes)

    @property
    def below_floor(self) -> str | None:
        """Why this model is experimental (its own evidence misses ``floor``), or None.

        Missing evidence counts as missing the floor: a model is presented as working only on
        measured numbers.
        """
        if not self.floor:
            return None
        key, what = EVIDENCE[self.evidence]
        measured = self.card.get(key) or {}
        misses = []
        for metric, bound in self.floor.items():
            value = measured.get(metric)
            if value is None:
                misses.append(f"{metric} not measured")
            elif metric in CEILING_METRICS and float(value) > bound:
                misses.append(f"{metric} {float(value):.3f} > {bound:g}")
            elif metric not in CEILING_METRICS and float(value) < bound:
                misses.append(f"{metric} {float(value):.3f} < {bound:g}")
        if not misses:
            return None
        where = f" on {measured['data']}" if measured.get("data") else ""
        return f"its own evidence ({what}{where}) is below the floor: {', '.join(misses)}"

    def weights_path(self, model_dir: Path) -> Path | None:
        if self.weights is None:
            return None
        p = Path(self.weights.file)
        return p if p.is_absolute() else model_dir / p


# ModelSpec.evidence -> (card key holding the measured metrics, what people read)
EVIDENCE = {"val": ("evaluation", "validation"), "cv": ("cv_evaluation", "patient-grouped cross-validation")}
CEILING_METRICS = frozenset({"ece"})


class Registry:
    """An ordered, read-only collection of :class:`ModelSpec`."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.id in self._specs:
                raise ValueError(f"duplicate model id {spec.id!r}")
            self._specs[spec.id] = spec

    @classmethod
    def from_yaml(cls, path: Path) -> Registry:
        with Path(path).open(encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
        return cls([ModelSpec.model_validate(item) for item in raw.get("models", [])])

    def __getitem__(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            raise UnknownModel(f"unknown model {model_id!r}; known: {sorted(self._specs)}") from None

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def ids(self) -> list[str]:
        return list(self._specs)

    def image_models(self) -> list[ModelSpec]:
        return [s for s in self if s.is_image_model]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def bump_version(version: str) -> str:
    """The version a retrained model gets: ``1.0.0`` for a first (0.x) model, else the next patch."""
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:3]] + [0, 0, 0]
    major, minor, patch = parts[:3]
    return "1.0.0" if major == 0 else f"{major}.{minor}.{patch + 1}"
