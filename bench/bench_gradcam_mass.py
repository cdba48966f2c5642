"""How much of the Grad-CAM heatmap falls inside the head, on brain MRI val images.

The head is the non-background region: the background is the dark area connected to the
image frame (bright specks are dropped by size, then a small closing bridges thin dark gaps
in the scalp), so the skull, scalp, face and dark structures enclosed by the head all count
as head; the largest such region is kept. For each image the heatmap (upsampled to the image exactly as the overlay
does) is normalised to sum 1, and the fraction of its mass inside the head is recorded.

The same images are also scored with a uniform heatmap: its inside fraction is the head's
share of the frame, i.e. what a map that ignores the image would get ("chance").

Runs through the app's own path: decode_image -> registry spec -> KerasImageBackend.

    python bench/bench_gradcam_mass.py [--data ../shared/datasets/brain_mri/val] [--limit 0]
        [--layer NAME]      explain another layer than the spec's gradcam_layer
        [--weights FILE]    a candidate .keras file instead of the installed one
        [--registry FILE]   take the spec (e.g. a candidate's input.crop) from another registry
        [--legacy-mask]     the previous mask (bright pixels, largest component, holes filled)
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

from inference.framing import joined_to_border  # after the path insert

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench")


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.ones_like(mask, dtype=bool)
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
    return np.asarray(labels == (int(np.argmax(sizes)) + 1), dtype=bool)


def head_mask(pixels: np.ndarray, threshold: int = 20, min_size: float = 0.002) -> np.ndarray:
    """Boolean mask of the head: everything not connected to the image frame through dark pixels."""
    gray = pixels.astype(np.float32).mean(axis=2)
    bright = gray > threshold
    # Drop specks and noise by size, not by an opening, which would also erase a thin scalp.
    labels, n = ndimage.label(bright)
    if n:
        sizes = np.asarray(ndimage.sum(bright, labels, index=range(1, n + 1)))
        keep = np.concatenate([[False], sizes >= min_size * bright.size])
        bright = keep[labels]
    bright = ndimage.binary_closing(bright, iterations=3, border_value=0)  # bridge thin dark gaps
    return _largest_component(~joined_to_border(~bright))


def legacy_head_mask(pixels: np.ndarray, threshold: int = 20) -> np.ndarray:
    """The first mask: bright pixels, largest component, holes filled. It drops the scalp,
    skull and face whenever a dark gap separates them from the brain."""
    gray = pixels.astype(np.float32).mean(axis=2)
    mask = _largest_component(ndimage.binary_opening(gray > threshold, iterations=2))
    return np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)


def inside_fraction(heat: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of a non-negative map's mass inside ``mask``; None for an all-zero map."""
    heat = np.clip(heat, 0, None)
    total = float(heat.sum())
    return None if total <= 0 else float(heat[mask].sum()) / total


def _summary(name: str, arr: np.ndarray) -> str:
    return (
        f"{name}: mean {arr.mean():.1%}, median {np.median(arr):.1%}, "
        f"10th percentile {np.percentile(arr, 10):.1%}, images >= 90% inside {(arr >= 0.9).mean():.1%}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "brain_mri" / "val")
    ap.add_argument("--model", default="brain_tumor")
    ap.add_argument("--limit", type=int, default=0, help="images per class (0 = all)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--layer", default=None, help="explain this layer instead of the spec's gradcam_layer")
    ap.add_argument("--weights", type=Path, default=None, help="a .keras file to use instead of the installed one")
    ap.add_argument(
        "--registry", type=Path, default=REPO / "assets" / "models.yaml", help="registry with the spec to use"
    )
    ap.add_argument("--legacy-mask", action="store_true", help="use the previous (bright-pixel) head mask")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from inference.backends.keras_image import KerasImageBackend
    from inference.framing import framing_for
    from inference.gradcam import FusedExplainer
    from inference.imaging import decode_image
    from inference.manager import ModelManager
    from inference.overlay import resize_map
    from inference.registry import Head, Registry

    reg = Registry.from_yaml(args.registry)
    loaded = (
        KerasImageBackend.load(reg[args.model], args.weights, "cpu")
        if args.weights is not None
        else ModelManager(reg, REPO / "assets" / "models", device="cpu").get(args.model)
    )
    assert isinstance(loaded, KerasImageBackend), f"{args.model} is not a Keras image model"
    backend = loaded
    if args.layer is not None:
        spec = backend.spec
        backend.explainer = FusedExplainer(
            backend.model,
            input_shape=(spec.input.size, spec.input.size, spec.input.channels),
            single_sigmoid=spec.head is Head.SIGMOID_SINGLE,
            layer_name=args.layer,
        )
    mask_fn = legacy_head_mask if args.legacy_mask else head_mask

    files: list[tuple[str, Path]] = []
    for cls in sorted(p for p in args.data.iterdir() if p.is_dir()):
        found = sorted(cls.iterdir())
        files.extend((cls.name, f) for f in (found[: args.limit] if args.limit else found))
    fractions: list[float] = []
    chance: list[float] = []
    chance_seen: list[float] = []
    classes: list[str] = []
    empty: list[str] = []
    grid = None
    for start in range(0, len(files), args.batch):
        chunk = files[start : start + args.batch]
        images = [decode_image(f.read_bytes()).pixels for _, f in chunk]
        out = backend.predict(images, explain=True)
        for (cls_name, _), pixels, pred in zip(chunk, images, out.predictions, strict=True):
            assert pred.explanation is not None
            grid = pred.explanation.shape
            h, w = pixels.shape[:2]
            mask = mask_fn(pixels)
            frac = inside_fraction(resize_map(pred.explanation, (w, h)), mask)
            if frac is None:  # an all-zero map: no mass anywhere, counted apart
                empty.append(cls_name)
                continue
            fractions.append(frac)
            chance.append(float(mask.mean()))
            # a uniform map over just the part the model saw (the crop square, when it crops)
            seen = np.zeros_like(mask)
            fr = framing_for(pixels, backend.spec.input.crop)
            x0, y0 = max(0, round(fr.x0)), max(0, round(fr.y0))
            seen[y0 : round(fr.y0 + fr.side_y), x0 : round(fr.x0 + fr.side_x)] = True
            chance_seen.append(float(mask[seen].mean()))
            classes.append(cls_name)
    arr, ref, cls_arr = np.asarray(fractions), np.asarray(chance), np.asarray(classes)
    layer = backend.explainer.layer_name
    print(f"\n{args.model}: Grad-CAM on {layer!r}, map {grid} on the image frame, {len(arr)} images from {args.data}")
    mask_name = "legacy (bright pixels)" if args.legacy_mask else "head = not joined to the frame by dark pixels"
    print(f"mask: {mask_name}")
    if empty:
        per = ", ".join(f"{c} {empty.count(c)}" for c in sorted(set(empty)))
        print(f"empty maps (no positive evidence at the layer; left out below): {len(empty)} ({per})")
    print(_summary("heatmap mass inside the head", arr))
    print(_summary("uniform map (chance: head share of the frame)", ref))
    if backend.spec.input.crop != "none":
        print(
            _summary(f"uniform over what the model saw (input.crop {backend.spec.input.crop})", np.asarray(chance_seen))
        )
    for name in sorted(set(classes)):
        sel = cls_arr == name
        print(f"  {name:<12} n={int(sel.sum()):4d}  inside {arr[sel].mean():.1%}  (chance {ref[sel].mean():.1%})")


if __name__ == "__main__":
    main()
