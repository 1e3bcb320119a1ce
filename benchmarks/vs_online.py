"""The cost benchmark: one TaskRes run done the original way (encoder in the loop) vs. the featbench way.

(a) online — what the TaskRes reference code does: every epoch, every few-shot training image is decoded,
    freshly augmented (RandomResizedCrop scale (0.08, 1) + horizontal flip, bicubic, the encoder's input size)
    and pushed through the frozen image encoder; the TaskRes residual is trained on those features. The test
    set is encoded once for the evaluation.
(b) featbench — `featbench.extract.extract` once (plain features of every split + V augmented views of the
    few-shot train rows), then `get_head("taskres")` fitted from the cache arrays.

Both use the same open_clip encoder (featbench.encoders.Encoder; random weights, `pretrained none`: speed does
not depend on the weights). When (a) at the paper's epochs would take long, only --measure-epochs epochs are
run and the per-epoch time is extrapolated linearly to --epochs (said so in the output).

    python benchmarks/vs_online.py --model ViT-B-32 --classes 5 --shots 16 --measure-epochs 2

Prints both wall times, their ratio and the break-even: how many fits (heads x shots x seeds x grid points)
one extraction pays for.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PAPER_EPOCHS = {1: 100, 2: 100, 4: 100, 8: 200, 16: 200}  # TaskRes: 100 epochs for 1/2/4 shots, 200 for 8/16
DATASET = "caltech101"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (RN50 or ViT-B-32, random weights)")
    p.add_argument("--classes", type=int, default=5, help="classes of the generated dataset")
    p.add_argument("--shots", type=int, default=16, help="training images per class")
    p.add_argument("--test-per-class", type=int, default=4, help="test images per class")
    p.add_argument("--image-size", type=int, default=256, help="side of the generated JPEGs")
    p.add_argument("--epochs", type=int, default=None, help="TaskRes epochs (default: the paper's for --shots)")
    p.add_argument("--measure-epochs", type=int, default=2, help="online epochs actually run (extrapolated to --epochs)")
    p.add_argument("--views", type=int, default=10, help="augmented views cached per training image in (b)")
    p.add_argument("--batch-size", type=int, default=64, help="encoder batch size (both ways)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda")
    p.add_argument("--workdir", default=None, help="where the dataset and cache go (default: a temp dir)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------
# (a) the original, encoder-in-the-loop TaskRes
# ----------------------------------------------------------------------------------------------------
class OnlineTaskRes:
    """TaskRes (REFERENCE.md) trained on features the frozen encoder computes from fresh crops each epoch."""

    def __init__(self, encoder, text, n_classes, *, alpha=0.5, lr=2e-3, weight_decay=5e-4, epochs=200,
                 batch_size=256, seed=1):
        import torch

        self.torch = torch
        self.enc = encoder
        self.dev = torch.device(encoder.device)
        self.w0 = torch.as_tensor(text, dtype=torch.float32, device=self.dev).mean(0)  # [C, D], not normalised
        self.x = torch.zeros_like(self.w0, requires_grad=True)
        self.alpha, self.lr, self.epochs, self.batch_size = alpha, lr, epochs, batch_size
        self.scale = float(encoder.logit_scale)
        self.opt = torch.optim.Adam([self.x], lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
        self.gen = torch.Generator().manual_seed(seed)
        from torchvision import transforms as T

        self.augment = T.Compose([
            T.RandomResizedCrop(encoder.image_size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(encoder.mean, encoder.std),
        ])

    def _lr(self, epoch):
        if epoch == 0:
            return 1e-5  # one warm-up epoch at a constant 1e-5
        return 0.5 * self.lr * (1 + math.cos(math.pi * (epoch - 1) / max(1, self.epochs - 1)))

    def logits(self, feats):
        w = self.w0 + self.alpha * self.x
        f = feats / feats.norm(dim=-1, keepdim=True)
        return self.scale * f @ (w / w.norm(dim=-1, keepdim=True)).T

    def epoch(self, epoch, files, labels, encode_batch):
        """One pass: decode + augment + encode every training image (as a DataLoader would), train X."""
        t = self.torch
        from featbench.encoders import load_rgb

        for g in self.opt.param_groups:
            g["lr"] = self._lr(epoch)
        order = t.randperm(len(files), generator=self.gen).tolist()
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            feats = []
            for s in range(0, len(idx), encode_batch):
                imgs = t.stack([self.augment(load_rgb(files[i])) for i in idx[s:s + encode_batch]])
                feats.append(self.enc.encode_images(imgs)[0].float())
            f = t.cat(feats)
            y = t.as_tensor([labels[i] for i in idx], device=self.dev)
            loss = t.nn.functional.cross_entropy(self.logits(f), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()


def encode_plain(encoder, files, batch):
    import torch

    from featbench.encoders import load_rgb

    out = []
    for s in range(0, len(files), batch):
        imgs = torch.stack([encoder.test_transform(load_rgb(f)) for f in files[s:s + batch]])
        out.append(encoder.encode_images(imgs)[0].float())
    return torch.cat(out)


def run_online(args, ds, epochs):
    """Returns (seconds for the whole run at `epochs`, measured seconds, epochs measured, test acc)."""
    import torch

    from featbench.encoders import Encoder
    from featbench.fewshot import fewshot_rows

    t0 = time.perf_counter()
    enc = Encoder(args.model, "none", args.device)
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    text = enc.encode_text(ds.classnames, ds.templates)
    text = text[0] if isinstance(text, tuple) else text
    text = torch.as_tensor(text).float().cpu().numpy()
    train_labels = [y for _, y in ds.splits["train"]]
    val_labels = [y for _, y in ds.splits.get("val", [])] or None
    rows = fewshot_rows(train_labels, val_labels, args.shots, 1).train
    files = [ds.root / ds.splits["train"][r][0] for r in rows]
    labels = [train_labels[r] for r in rows]
    test_files = [ds.root / p for p, _ in ds.splits["test"]]
    test_labels = torch.as_tensor([y for _, y in ds.splits["test"]])
    test_feats = encode_plain(enc, test_files, args.batch_size)
    t_setup = time.perf_counter() - t1
    head = OnlineTaskRes(enc, text, len(ds.classnames), epochs=epochs)
    n_run = min(args.measure_epochs, epochs)
    t2 = time.perf_counter()
    for e in range(n_run):
        head.epoch(e, files, labels, args.batch_size)
    t_epochs = time.perf_counter() - t2
    with torch.no_grad():
        acc = float((head.logits(test_feats.to(head.dev)).argmax(1).cpu() == test_labels).float().mean()) * 100
    per_epoch = t_epochs / n_run
    total = t_load + t_setup + per_epoch * epochs  # model load counts both ways (extract loads it too)
    return {"total": total, "setup": t_setup, "per_epoch": per_epoch, "measured_epochs": n_run,
            "model_load": t_load, "acc": acc, "images_per_epoch": len(files)}


# ----------------------------------------------------------------------------------------------------
# (b) featbench: extract once, fit from the cache
# ----------------------------------------------------------------------------------------------------
def run_featbench(args, root, out, epochs):
    from featbench.cache import Cache
    from featbench.extract import extract
    from featbench.fewshot import fewshot_rows
    from featbench.heads import get_head

    t0 = time.perf_counter()
    path = extract(DATASET, root, model=args.model, pretrained="none", splits=("train", "val", "test"),
                   views=args.views, view_shots=(args.shots,), seeds=(1, 2, 3), train_rows="all",
                   batch_size=args.batch_size, workers=0, device=args.device, dtype="float16",
                   out=out, overwrite=True, progress=False)
    t_extract = time.perf_counter() - t0
    with Cache(path) as c:
        t1 = time.perf_counter()
        tr = c.labels("train")
        va = c.labels("val") if c.has_split("val") else None
        sub = fewshot_rows(tr, va, args.shots, 1)
        X, y = c.features("train", sub.train), tr[sub.train]
        views = c.views(sub.train) if c.has_views else None
        text = c.text_features()
        Xt, yt = c.features("test"), c.labels("test")[c.feature_rows("test")]
        head = get_head("taskres", dataset=DATASET, shots=args.shots, epochs=epochs, device="cpu")
        head.fit(X, y, text=text, views=views, logit_scale=c.logit_scale, classnames=c.classnames)
        acc = head.score(Xt, yt) * 100
        t_fit = time.perf_counter() - t1
    return {"extract": t_extract, "fit": t_fit, "acc": acc, "path": path}


def _load():
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def fmt(s):
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s"


def main(argv=None):
    args = parse_args(argv)
    import torch

    epochs = args.epochs or PAPER_EPOCHS.get(args.shots, 200)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="featbench-vs-online-"))
    work.mkdir(parents=True, exist_ok=True)
    from featbench.datasets import load_dataset
    from featbench.synthetic import make_dataset

    root = make_dataset(work / "data", layout=DATASET, n_classes=args.classes,
                        per_split=(args.shots, 4, args.test_per_class), size=args.image_size, seed=0)
    ds = load_dataset(DATASET, root)
    n_train = len(ds.splits["train"])
    print(f"featbench vs online TaskRes — {args.model} (random weights), {DATASET} generated: {args.classes} classes, "
          f"{args.shots} shots ({n_train} train, {len(ds.splits['val'])} val, {len(ds.splits['test'])} test images, "
          f"{args.image_size}px JPEG), {epochs} epochs, device {args.device}, torch threads {torch.get_num_threads()}, "
          f"load average {_load()}")
    sys.stdout.flush()

    b = run_featbench(args, root, work / "cache.h5", epochs)
    print(f"(b) featbench: extract {fmt(b['extract'])} (plain features of all splits + {args.views} views of the "
          f"few-shot rows), TaskRes fit from the cache {fmt(b['fit'])}; test acc {b['acc']:.1f}%")
    sys.stdout.flush()
    a = run_online(args, ds, epochs)
    extrapolated = a["measured_epochs"] < epochs
    note = (f"measured {a['measured_epochs']} epoch(s) at {fmt(a['per_epoch'])}/epoch and EXTRAPOLATED linearly to "
            f"{epochs} epochs" if extrapolated else f"ran all {epochs} epochs")
    print(f"(a) online:    {fmt(a['total'])} = model load {fmt(a['model_load'])} + test/text encoding {fmt(a['setup'])} + {epochs} x "
          f"{fmt(a['per_epoch'])} per epoch ({a['images_per_epoch']} fresh crops encoded each epoch); {note}; "
          f"test acc after the measured epochs {a['acc']:.1f}%")
    t_b = b["extract"] + b["fit"]
    print(f"one TaskRes run: online {fmt(a['total'])} vs featbench {fmt(t_b)} (extract + fit): "
          f"ratio {a['total'] / t_b:.1f}x")
    saved_per_fit = a["total"] - b["fit"]
    if saved_per_fit > 0:
        breakeven = b["extract"] / saved_per_fit
        print(f"break-even: one extraction ({fmt(b['extract'])}) costs as much as {b['extract'] / a['total']:.2f} online run(s); "
              f"it has paid for itself once {max(1, math.ceil(breakeven))} fit(s) are run (n >= extract / (online - fit) = "
              f"{breakeven:.2f}); every fit after that costs {fmt(b['fit'])} instead of {fmt(a['total'])} "
              f"({a['total'] / b['fit']:.0f}x less)")
        if a["total"] > b["extract"]:
            k = int((a["total"] - b["extract"]) // b["fit"])
            print(f"in the wall time of ONE online run, featbench extracts once and runs {k} fits "
                  f"(heads x shots x seeds x grid points)")
        grid = 10 * 5 * 3 * 10
        print(f"e.g. heads x shots x seeds x grid points = 10 x 5 x 3 x 10 = {grid} fits at this run's per-fit cost: "
              f"online ~{fmt(grid * a['total'])}, featbench ~{fmt(b['extract'] + grid * b['fit'])} (one extraction: "
              f"its views cover every shot count and seed)")
    else:
        print("break-even: never (a cached fit costs as much as an online run here)")
    print(f"load average at the end {_load()} (other processes on this machine slow both ways alike)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
