"""The EfficientNet backbone's blocks in PyTorch and in ONNX Runtime: time per image and agreement.

    python benchmarks/cnn_runtime_speed.py                     # Lite0 at 256 px, 1 and 2 threads
    python benchmarks/cnn_runtime_speed.py --variants efficientnet-lite0,efficientnet-lite1 --sizes 256,384

Each row: one image per call (as `anomalens detect` scores on the CPU), the read blocks of
patchknn's default (and the lengths' blocks), median of `--repeat` timed calls after warm-up;
"max rel. diff" is the largest |ORT - torch| over a block's largest |torch| value.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def median_ms(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="efficientnet-lite0")
    parser.add_argument("--sizes", default="256")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    from anomalens.backbones import cnn_runtime
    from anomalens.backbones.cnn import EfficientNetPatchBackbone

    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__} ({cpu}); {os.cpu_count()} CPUs\n")
    print("| backbone | px | threads | torch ms/image | onnxruntime ms/image | speed-up | max rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        net = EfficientNetPatchBackbone(image_size=256, variant=variant, length_weight=4.0)
        for size in (int(s) for s in args.sizes.split(",")):
            x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                with torch.no_grad():
                    torch_ms = median_ms(lambda n=net, x=x: n.run_blocks_in_torch(x), args.repeat)
                    os.environ[cnn_runtime.RUNTIME_ENV] = "onnxruntime"
                    ort_ms = median_ms(lambda n=net, x=x: n._run_until_last_block(x), args.repeat)
                    got, want = net._run_until_last_block(x), net.run_blocks_in_torch(x)
                diff = max(float((got[b] - want[b]).abs().max() / want[b].abs().max()) for b in want)
                print(
                    f"| {variant} | {size} | {threads} | {torch_ms:.1f} | {ort_ms:.1f} | {torch_ms / ort_ms:.1f} x | "
                    f"{diff:.1e} |"
                )


if __name__ == "__main__":
    main()
