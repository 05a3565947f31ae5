"""Time one FiLo training step and peak memory at the paper's size on this machine.

ViT-L-14-336 with random weights (same FLOPs as OpenAI's), 518 px input, batch 1, the packaged
defect vocabulary of one MVTec category; stage 1 (prompts + MMCI + linear heads, local loss) and
stage 2 (adapter, global loss) steps, plus one inference forward. Prints a Markdown table.

    python benchmarks/filo_step_time.py [--arch ViT-L-14-336] [--size 518] [--steps 3] [--threads N]

With --data, it times whole training steps of `anomalens train filo` instead (data loading in
`--workers` processes + forward + backward + AdamW) on that dataset, e.g. the smoke config:

    python benchmarks/filo_step_time.py --data ../shared/data --categories magnetic_tile \
        --arch test-tiny-24 --size 56 --steps 100 --threads 1 [--workers 2]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-L-14-336")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per stage (after one warm-up)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", default=None, help="time whole Trainer steps on this dataset root")
    parser.add_argument("--dataset", default="mvtec")
    parser.add_argument("--categories", default=None, help="comma-separated, with --data")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes, with --data")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data:
        trainer_steps(args)
        return

    from anomalens.methods.filo.checkpoint import build_backbone, build_model
    from anomalens.methods.filo.losses import global_loss, local_loss
    from anomalens.methods.filo.model import FiloConfig
    from anomalens.methods.filo.prompts import build_prompts
    from anomalens.text.prompts import load_defect_vocabulary

    rows: list[tuple[str, str]] = []
    start = time.perf_counter()
    backbone = build_backbone(args.arch, None, args.size)
    model = build_model(backbone, FiloConfig())
    rows.append(("build model (s)", f"{time.perf_counter() - start:.1f}"))
    groups = model.parameter_groups()
    count = {k: sum(p.numel() for p in v) for k, v in groups.items()}
    rows.append(("trainable params: prompts / dense / adapter (M)",
                 " / ".join(f"{count[k] / 1e6:.2f}" for k in ("prompts", "dense", "adapter"))))
    descriptions = load_defect_vocabulary().for_category(args.category)
    prompts = [build_prompts(args.category, descriptions, "top left")]
    rows.append(("prompts per image: normal / abnormal", f"{len(prompts[0].normal)} / {len(prompts[0].abnormal)}"))
    images = torch.randn(1, 3, args.size, args.size)
    mask = torch.zeros(1, args.size, args.size)
    mask[:, : args.size // 4, : args.size // 4] = 1
    labels = torch.ones(1, dtype=torch.long)

    def timed_steps(stage: int) -> list[float]:
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name in (("prompts", "dense") if stage == 0 else ("adapter",)))
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=1e-4)
        times = []
        for _ in range(args.steps + 1):
            t = time.perf_counter()
            out = model(images, prompts, with_maps=stage == 0)
            if stage == 0:
                loss = sum(local_loss(m, mask) for m in out.supervised_maps())
            else:
                loss = global_loss(out.logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        return times[1:]

    model.train()
    backbone.eval()
    s1 = timed_steps(0)
    rows.append(("stage 1 step (s): mean / min", f"{sum(s1) / len(s1):.1f} / {min(s1):.1f}"))
    rows.append(("peak RSS after stage 1 (GiB)", f"{peak_rss_gib():.2f}"))
    s2 = timed_steps(1)
    rows.append(("stage 2 step (s): mean / min", f"{sum(s2) / len(s2):.1f} / {min(s2):.1f}"))
    model.eval()
    with torch.no_grad():
        t = time.perf_counter()
        model(images, prompts)
        rows.append(("inference forward (s)", f"{time.perf_counter() - t:.1f}"))
    rows.append(("peak RSS (GiB)", f"{peak_rss_gib():.2f}"))

    print(f"FiLo step time: {args.arch}, {args.size} px, batch 1, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}\n")
    print("| quantity | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def trainer_steps(args: argparse.Namespace) -> None:
    """Mean wall time between consecutive training steps of the Trainer (after 10 warm-up steps)."""
    import tempfile

    from anomalens.methods.filo.train import TrainConfig, Trainer

    warm = 10
    categories = tuple(args.categories.split(",")) if args.categories else None
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            data=args.data, out=out, dataset=args.dataset, categories=categories, backbone=args.arch,
            weights=None, image_size=args.size, epochs=1000, adapter_epochs=0, max_steps=warm + args.steps + 1,
            checkpoint_every=0, resume=False, workers=args.workers,
        )
        trainer = Trainer(config, log=lambda m: None)
        stamps: list[float] = []
        loss = trainer.loss

        def stamped(*a, **k):
            stamps.append(time.perf_counter())
            return loss(*a, **k)

        trainer.loss = stamped
        trainer.run(progress_bar=False)
    gaps = [b - a for a, b in zip(stamps[warm:], stamps[warm + 1 :])]
    print(f"FiLo training step: {args.arch}, {args.size} px, {args.workers} workers, {torch.get_num_threads()} "
          f"threads, {len(gaps)} steps after {warm} warm-up\n")
    print("| quantity | value |\n|---|---|")
    print(f"| training step (ms): mean / min | {1000 * sum(gaps) / len(gaps):.1f} / {1000 * min(gaps):.1f} |")


if __name__ == "__main__":
    main()
