"""CPU (or GPU) cost of one 16-shot EuroSAT-shaped CoOp fit at RN50 text width, and the EOT cut's speed-up.

    python benchmarks/coop_fit.py [--epochs-timed 3] [--threads 1] [--device cpu]

Shape: 10 EuroSAT classes (CoOp's class names), 160 train images (16 shots), 10 cached views, D=1024,
batch 32 (5 SGD steps per epoch), CoOp's 16 random context vectors, 200 epochs. The text tower is open_clip's
RN50 config (width 512, 12 layers, 8 heads, context 77) with random weights (``create_model("RN50",
pretrained=None)``): cost does not depend on the weights. The image side is cached features, so a fit is
200 x 5 forward+backward passes of the text tower over the 10 prompts.

Timing: the fit is timed over ``--epochs-timed`` epochs (after one untimed warm-up epoch) and extrapolated
linearly to 200 epochs (every epoch does the same work: 5 steps over the same 10 prompts); the printout
says so. Both wall time and this process's CPU time are printed: on a shared machine the CPU time is the
cost, the wall time includes waiting for a core. The shortcuts are measured in the same run: the same fit
with the transformer over all 77 positions, with the EOT cut only, and with the EOT cut plus the shared
prefix (SOS + context computed once for all classes, ``TextTower.encode_shared``), the head's default.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

EUROSAT = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings",
           "Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs-timed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="RN50")
    args = ap.parse_args()

    import open_clip
    import torch

    from featbench.encoders import quiet_root_logger
    from featbench.heads.coop import CoOp
    from featbench.texttower import TextTower

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with quiet_root_logger():
        net = open_clip.create_model(args.model, pretrained=None)
    tower = TextTower.from_model(net.eval(), open_clip.get_tokenizer(args.model)).on(args.device)
    del net
    C, K, V, D, total_epochs = 10, 16, 10, 1024, 200
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(C), K)
    X = rng.normal(size=(C * K, D)).astype(np.float32)
    views = (X[None] + 0.1 * rng.normal(size=(V, C * K, D))).astype(np.float32)
    cfg = open_clip.get_model_config(args.model)["text_cfg"]
    print(f"{args.model} text tower: width {cfg['width']}, {cfg['layers']} layers, context {cfg.get('context_length', 77)}; "
          f"device {args.device}, torch threads {torch.get_num_threads()}")

    class Variant:  # the same tower with a shortcut switched off
        def __init__(self, t, cut, shared):
            self.t, self.cut, self.shared = t, cut, shared

        def __getattr__(self, name):
            return getattr(self.t, name)

        def on(self, device):
            return self

        def supports_shared_prefix(self):
            return self.shared and self.t.supports_shared_prefix()

        def encode(self, x, eot, cut=True):
            if not self.cut:  # the head hands over prompts cut after the last EOT: pad back to 77 positions
                pad = x.new_zeros(x.shape[0], self.t.context_length - x.shape[1], x.shape[2])
                x = torch.cat([x, pad], dim=1)
            return self.t.encode(x, eot, cut=self.cut)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def per_epoch(tw, epochs):
        """(wall s/epoch, process CPU s/epoch, setup wall s, fitted head) of the CoOp fit with this tower."""
        fit = lambda e: CoOp(epochs=e, device=args.device, random_state=1).fit(  # noqa: E731
            X, y, text_tower=tw, classnames=EUROSAT, logit_scale=100.0, views=views)
        fit(1)  # warm-up (allocator, first-call overheads)
        sync()
        t0 = time.perf_counter()
        fit(0)
        sync()
        t_setup = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        h = fit(epochs)
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return (wall - t_setup) / epochs, cpu / epochs, t_setup, h

    results = {}
    for label, tw, n in [("EOT cut + shared prefix (default)", tower, args.epochs_timed),
                         ("EOT cut only", Variant(tower, True, False), max(1, args.epochs_timed // 2)),
                         ("full 77 positions", Variant(tower, False, False), max(1, args.epochs_timed // 2))]:
        wall, cpu, t_setup, h = per_epoch(tw, n)
        results[label] = (wall, cpu)
        est_wall, est_cpu = t_setup + total_epochs * wall, total_epochs * cpu
        print(f"{label:36s} {wall:7.3f} s/epoch wall, {cpu:7.3f} s/epoch process CPU (5 steps, timed over {n} "
              f"epoch(s), {h.fit_info_['tokens_run']} positions) -> {total_epochs} epochs: {est_wall / 60:5.1f} min wall, "
              f"{est_cpu / 60:5.1f} min CPU (extrapolated linearly)")
    (dw, dc), (cw, cc), (fw, fc) = results.values()
    print(f"speed-up vs the full 77-position pass (CPU time): EOT cut x{fc / cc:.2f}, EOT cut + shared prefix x{fc / dc:.2f} "
          f"(wall: x{fw / cw:.2f}, x{fw / dw:.2f})")


if __name__ == "__main__":
    main()
