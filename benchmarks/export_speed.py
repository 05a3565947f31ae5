"""PyTorch vs onnxruntime: seconds per image of each exported method on this CPU.

Each method is fitted (few-shot on synthetic images) at its default settings, exported with
`export_onnx` (which also checks parity), and the same images are scored one by one by the
PyTorch detector and by the exported model, both with one thread. CLIP methods use random
weights of the real architecture (same FLOPs as trained ones; no weights ship here).

    python benchmarks/export_speed.py                           # patchknn, winclip, fade
    python benchmarks/export_speed.py --configs patchknn-4 --images 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "patchknn-0": ("patchknn", 0, {}),
    "patchknn-4": ("patchknn", 4, {}),
    "winclip-1": ("winclip", 1, {"weights": "random"}),
    "fade-1": ("fade", 1, {"weights": "random"}),
    # FADE with only its 240 px scale: the 896 px one needs minutes per image on a busy 2-core machine.
    "fade-1-240": ("fade", 1, {"weights": "random", "segmentation_sizes": (240,)}),
}


def per_image(det, images) -> float:
    det.predict(images[:1])  # warm-up
    start = time.perf_counter()
    for img in images:
        det.predict([img])
    return (time.perf_counter() - start) / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="patchknn-0,patchknn-4,winclip-1,fade-1")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from anomalens import Detector
    from anomalens.export import export_onnx, load_onnx_detector
    from anomalens.export.graph import synthetic_image
    from anomalens.images import LoadedImage

    images = [LoadedImage(f"q{i}.png", synthetic_image(480, 640, seed=100 + i)) for i in range(args.images)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            method, shots, settings = CONFIGS[name]
            torch.manual_seed(0)
            det = Detector(method, **settings)
            det.fit([LoadedImage(f"r{i}.png", synthetic_image(480, 640, seed=i)) for i in range(shots)])
            path = Path(tmp) / f"{name}.onnx"
            report = export_onnx(det, path)
            exported = load_onnx_detector(path, threads=args.threads)
            t_torch = per_image(det, images)
            t_onnx = per_image(exported, images)
            diff = max(report.max_map_difference, report.max_score_difference)
            rows.append(row(name, t_torch, t_onnx, path.stat().st_size / 1e6, report.seconds, diff))
            print(f"done: {rows[-1]}", flush=True)  # each row as soon as it is measured
            path.unlink()
    print(f"\n{args.images} images of 640x480, {args.threads} thread(s), seconds per image\n")
    print("| method | PyTorch s/image | onnxruntime s/image | speed-up | .onnx MB | export s | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def row(name: str, t_torch: float, t_onnx: float, mb: float, export_seconds: float, diff: float) -> str:
    speedup = t_torch / t_onnx
    return f"| {name} | {t_torch:.3f} | {t_onnx:.3f} | {speedup:.2f}x | {mb:.0f} | {export_seconds:.0f} | {diff:.1e} |"


if __name__ == "__main__":
    main()
