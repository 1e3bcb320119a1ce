"""CPU (or GPU) cost of CoCoOp: one training step and the scoring of one test image, per class prompt.

    python benchmarks/cocoop_fit.py [--model tiny-vit|ViT-B-16] [--classes 10] [--steps 5] [--threads 1]

CoCoOp conditions the context on each image, so every training image runs the text tower forward and backward
over all C class prompts (batch 1: one image per SGD step), and every test image runs it forward over C prompts.
The cost is therefore linear in (images x classes); this script measures it on ImageNet class names (open_clip's
list, the first C) with the head itself (``featbench.heads.cocoop.CoCoOp``, ctx "a photo of a", random image
features of the cache's width), and extrapolates to 16-shot base-to-new runs. Towers: ``tiny-vit`` is the test
suite's tiny random-weight model (width 32, 1 layer); ``ViT-B-16`` is open_clip's config (width 512, 12 layers, 8
heads) with random weights: cost does not depend on the weights.

Timing: process CPU time (on a shared machine the cost; wall time includes waiting for a core) over ``--steps``
training steps (after one untimed warm-up epoch) and over ``--steps`` test images scored one at a time and in one
batched call. The extrapolations are estimates: linear in prompts, at this run's prompt length.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

#: 16-shot base-to-new (CoCoOp's protocol): base classes, train images, base + new test images
RUNS = {"EuroSAT": (5, 5 * 16, 8100), "ImageNet": (500, 500 * 16, 50000)}
EPOCHS = 10


def tower_for(model: str):
    import open_clip

    from featbench.encoders import Encoder, quiet_root_logger
    from featbench.texttower import TextTower

    if model.startswith("tiny"):
        enc = Encoder(model, "none", "cpu")
        return TextTower.from_model(enc.model, enc.tokenizer), int(enc.model.text_projection.shape[1])
    with quiet_root_logger():
        net = open_clip.create_model(model, pretrained=None)
    return TextTower.from_model(net.eval(), open_clip.get_tokenizer(model)), int(open_clip.get_model_config(model)["embed_dim"])


def cpu_seconds(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.process_time() - c0, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-vit")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from featbench.heads.cocoop import CoCoOp

    torch.set_num_threads(args.threads)
    tower, dim = tower_for(args.model)
    C, n = args.classes, args.steps
    names = list(IMAGENET_CLASSNAMES[:C])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    y = np.arange(n) % C
    fit = lambda e: CoCoOp(epochs=e, warmup_epochs=0, random_state=1).fit(X, y, text_tower=tower, classnames=names)  # noqa: E731
    fit(1)  # warm-up
    setup, _ = cpu_seconds(lambda: fit(0))
    train, train_wall = cpu_seconds(lambda: fit(1))
    head = fit(0)
    per_step = (train - setup) / n
    one_by_one, _ = cpu_seconds(lambda: [head.decision_function(X[i:i + 1]) for i in range(n)])
    batched, _ = cpu_seconds(lambda: head.decision_function(X))
    per_image = batched / n
    print(f"{args.model} text tower (width {tower.width}), {C} classes, {head.fit_info_['tokens_run']} positions, "
          f"torch threads {torch.get_num_threads()}")
    print(f"train: {per_step:.4f} s CPU per step (1 image x {C} prompts, forward + backward) = "
          f"{per_step / C * 1e3:.3f} ms per prompt   [wall {train_wall / n:.4f} s/step]")
    print(f"score: {per_image:.4f} s CPU per test image batched ({one_by_one / n:.4f} one at a time) = "
          f"{per_image / C * 1e3:.3f} ms per prompt")
    for name, (base, n_train, n_test) in RUNS.items():
        train_s = EPOCHS * n_train * base * per_step / C
        test_s = n_test * base * per_image / C  # base and new halves each score ~half the images over `base` classes
        print(f"estimate, 16-shot base-to-new {name} ({base} base classes, {n_train} images x {EPOCHS} epochs, "
              f"{n_test} test images): train {train_s / 3600:.2f} h + scoring {test_s / 3600:.2f} h CPU "
              "(linear in prompts, this prompt length)")


if __name__ == "__main__":
    main()
