"""Extraction throughput: the full pipeline vs the encoder's forward pass alone.

    python benchmarks/extract_throughput.py                       # tiny model, 300 generated JPEGs, CPU
    python benchmarks/extract_throughput.py --model RN50 --pretrained none --images 4096 --size 256 \
        --batch-size 256 --workers 8 --device cuda                # on a GPU (random weights: speed only)

Full pipeline = `featbench.extract` on generated JPEGs: decode + test-time preprocessing + encode + HDF5
write (+ flush per batch), in steady state (from the first finished batch to the last; model loading and
text encoding are reported separately). Forward only = `encode_image` on the same images already decoded
and preprocessed into tensors. The ratio says how much of the encoder's speed the pipeline keeps (goal: at
least 0.9); well below 1 means decoding/preprocessing (raise --workers) or writing is the bottleneck.
--batch-size and --workers default to what `featbench extract` uses on the device (64 and 0 on a CPU; 256
and min(16, cores) on CUDA). --json PATH also writes the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-vit")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--images", type=int, default=300, help="number of generated JPEGs")
    ap.add_argument("--size", type=int, default=64, help="generated image side in pixels")
    ap.add_argument("--batch-size", type=int, default=None, help="default: extract's for the device")
    ap.add_argument("--workers", type=int, default=None, help="default: extract's for the device")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--workdir", default=None, help="where to write the images and cache (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    from featbench.extract_spec import extraction_defaults

    batch, workers = extraction_defaults(args.device)
    args.batch_size = batch if args.batch_size is None else args.batch_size
    args.workers = workers if args.workers is None else args.workers

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from featbench.encoders import Encoder, load_rgb
    from featbench.extract import extract
    from featbench.synthetic import make_dataset

    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="featbench-bench-"))
    n_classes = 10
    per_class = max(1, -(-args.images // n_classes))
    t0 = time.perf_counter()
    root = make_dataset(tmp / "data", "caltech101", n_classes=n_classes, per_split=(per_class, 1, 1), size=args.size)
    n_images = per_class * n_classes
    print(f"generated {n_images} JPEGs ({args.size}px) in {time.perf_counter() - t0:.1f}s under {tmp}")

    # -- full pipeline -----------------------------------------------------------------------------------
    stamps: list[tuple[float, int]] = []
    bs = args.batch_size

    def hook(task, block):
        stamps.append((time.perf_counter(), block))

    t_start = time.perf_counter()
    extract("caltech101", root, model=args.model, pretrained=args.pretrained, splits=("train",), views=0,
            batch_size=bs, workers=args.workers, device=args.device, dtype=args.dtype, out=tmp / "bench.h5",
            overwrite=True, progress=False, _after_block=hook, log=lambda m: None)
    t_end = time.perf_counter()
    first_t = stamps[0][0]
    steady_images = n_images - min(bs, n_images)
    steady = steady_images / (stamps[-1][0] - first_t) if len(stamps) > 1 else float("nan")
    setup = first_t - t_start
    end_to_end = n_images / (t_end - t_start)

    # -- forward only on the same, already preprocessed tensors ------------------------------------------
    enc = Encoder(args.model, args.pretrained, args.device)
    from featbench.datasets import load_dataset

    ds = load_dataset("caltech101", root)
    tensors = torch.stack([enc.test_transform(load_rgb(ds.abspath(p))) for p, _ in ds.splits["train"]])
    batches = [tensors[i:i + bs] for i in range(0, len(tensors), bs)]
    if enc.device.startswith("cuda"):
        batches = [b.to(enc.device) for b in batches]
    sync = torch.cuda.synchronize if enc.device.startswith("cuda") else (lambda: None)
    enc.forward_only(batches[0])  # warm-up
    sync()
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        for b in batches:
            enc.forward_only(b)
    sync()
    forward = reps * n_images / (time.perf_counter() - t)

    print(f"model {args.model} pretrained {args.pretrained} device {enc.device} batch {bs} workers {args.workers} "
          f"threads {torch.get_num_threads()}")
    print(f"setup (load model, encode text, create file): {setup:.2f}s")
    print(f"full pipeline (decode+preprocess+encode+write), steady state: {steady:,.1f} images/s")
    print(f"full pipeline end to end incl. setup:                          {end_to_end:,.1f} images/s")
    print(f"encoder forward only (same tensors, preprocessed):            {forward:,.1f} images/s")
    ratio = steady / forward
    print(f"ratio pipeline/forward: {ratio:.3f} (goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "device": enc.device, "batch_size": bs, "workers": args.workers, "images": n_images,
            "threads": torch.get_num_threads(), "setup_s": round(setup, 3), "pipeline_images_per_s": round(steady, 1),
            "end_to_end_images_per_s": round(end_to_end, 1), "forward_images_per_s": round(forward, 1),
            "ratio": round(ratio, 3), "goal": GOAL}) + "\n")
    return 0


GOAL = 0.9


if __name__ == "__main__":
    sys.exit(main())
