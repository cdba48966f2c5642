"""How much of the Grad-CAM heatmap falls inside the head, on brain MRI val images.

The head is the non-background region: pixels brighter than a small threshold, holes
filled, largest connected component kept. For each image the heatmap (upsampled to the
image) is normalised to sum 1, and the fraction of its mass inside the head is recorded.
Runs through the app's own path: decode_image -> registry spec -> KerasImageBackend.

    python bench/bench_gradcam_mass.py [--data ../shared/datasets/brain_mri/val] [--limit 0]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench")


def head_mask(pixels: np.ndarray, threshold: int = 20) -> np.ndarray:
    """Boolean mask of the head: bright pixels, holes filled, largest component."""
    gray = pixels.astype(np.float32).mean(axis=2)
    mask = ndimage.binary_opening(gray > threshold, iterations=2)
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.ones_like(mask, dtype=bool)
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
    mask = labels == (int(np.argmax(sizes)) + 1)
    return np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "brain_mri" / "val")
    ap.add_argument("--model", default="brain_tumor")
    ap.add_argument("--limit", type=int, default=0, help="images per class (0 = all)")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from inference.imaging import decode_image
    from inference.manager import ModelManager
    from inference.overlay import resize_map
    from inference.registry import Registry

    reg = Registry.from_yaml(REPO / "assets" / "models.yaml")
    backend = ModelManager(reg, REPO / "assets" / "models", device="cpu").get(args.model)
    files = []
    for cls in sorted(p for p in args.data.iterdir() if p.is_dir()):
        found = sorted(cls.iterdir())
        files.extend(found[: args.limit] if args.limit else found)
    fractions: list[float] = []
    grid = None
    for start in range(0, len(files), args.batch):
        images = [decode_image(f.read_bytes()).pixels for f in files[start : start + args.batch]]
        out = backend.predict(images, explain=True)
        for pixels, pred in zip(images, out.predictions, strict=True):
            assert pred.explanation is not None
            grid = pred.explanation.shape
            h, w = pixels.shape[:2]
            heat = np.clip(resize_map(pred.explanation, (w, h)), 0, None)
            total = float(heat.sum())
            if total <= 0:
                continue
            fractions.append(float(heat[head_mask(pixels)].sum()) / total)
    arr = np.asarray(fractions)
    print(f"\n{args.model}: Grad-CAM grid {grid}, {len(arr)} images from {args.data}")
    print(f"heatmap mass inside the head: mean {arr.mean():.1%}, median {np.median(arr):.1%}, ")
    print(f"  images with >= 90% inside: {(arr >= 0.9).mean():.1%}; 10th percentile {np.percentile(arr, 10):.1%}")


if __name__ == "__main__":
    main()
