"""Every README figure that comes from the real ViT-B/32 fixtures, computed in one place.

The README quotes results on ``../shared/fixtures/real-vitb32/imagenet.npz`` (see that folder's README). Each
such figure sits between ``<!-- readme_tables:NAME -->`` and ``<!-- /readme_tables -->`` in README.md, and this
script is the only thing that writes it, so the README cannot drift from what the code gives:

- ``imagenet-fixture``: zeroshot / taskres / clip-adapter, 1 and 2 shots, mean ± population std over seeds
  1, 2, 3, protocol paper (the table under "Heads and their papers");
- ``stronger-heads``: Tip-Adapter beside the training-free ProKeR and APE and the trained APE-T, same cells;
- ``transclip``: TransCLIP-FS and -ZS (transductive) beside zero-shot, same cells;
- ``b2n``: base-to-new at 2 shots over seeds 1, 2, 3 (Base / New / H, H from the mean Base and mean New);
- ``compare``: `featbench compare`'s statistics lines for zero-shot vs Tip-Adapter at 1 shot: over seeds 1-3
  (paired t), and on seed 1 alone from per-class counts and from saved predictions (bootstraps).

    python benchmarks/readme_tables.py                  # compute, print, write benchmarks/readme_tables.md
    python benchmarks/readme_tables.py --check          # compute, exit 1 if README.md differs
    python benchmarks/readme_tables.py --update-readme  # compute, rewrite README.md's blocks
    python benchmarks/readme_tables.py --check --saved  # compare README.md with readme_tables.md, no compute

The full computation takes minutes on a 2-core CPU (TaskRes and CLIP-Adapter train 100 and 50 epochs on 1000
classes), so its output is committed as ``benchmarks/readme_tables.md``: a fast test checks README.md against
that file, and a ``real`` test recomputes the cheap rows (``--only``/``--heads``) against it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SAVED = REPO / "benchmarks" / "readme_tables.md"
DEFAULT_FIXTURES = Path(os.environ.get("FEATBENCH_REAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "real-vitb32"))
HEADS = ("zeroshot", "taskres", "clip-adapter")
SHOTS = (1, 2)
#: the other tables, each a list of (row label, head, --set overrides); fitted over SHOTS x SEEDS like the first
TABLES = {
    "stronger-heads": [("tip-adapter", "tip-adapter", {}), ("proker", "proker", {}), ("ape", "ape", {}),
                       ("ape-t", "ape-t", {})],
    "transclip": [("zeroshot (inductive, for reference)", "zeroshot", {}),
                  ("transclip (TransCLIP-FS on zero-shot, the default)", "transclip", {}),
                  ("transclip `mode=zs` (TransCLIP-ZS: the shots unused)", "transclip", {"transclip.mode": "zs"})],
}
#: `featbench compare` on the fixture: zero-shot vs Tip-Adapter at 1 shot, over seeds 1-3 and on seed 1 alone
COMPARE_HEADS = ("zeroshot", "tip-adapter")
BLOCKS = ("imagenet-fixture", *TABLES, "b2n", "compare")
SEEDS = (1, 2, 3)
B2N_SHOTS = 2
LABELS = {"zeroshot": "zero-shot", "taskres": "TaskRes", "clip-adapter": "CLIP-Adapter"}
BLOCK = re.compile(r"<!-- readme_tables:(?P<name>[\w-]+) -->(?P<body>.*?)<!-- /readme_tables -->", re.S)


def import_fixture(fixtures: Path, folder: Path) -> Path:
    """The ImageNet fixture as a cache, as the README's `featbench import` line writes it."""
    from featbench import import_features

    return import_features(fixtures / "imagenet.npz", folder / "imagenet.h5", dataset="imagenet",
                           model="ViT-B-32", pretrained="openai")


def fit_rows(cache: Path, out: Path, heads, shots, **options) -> list[dict]:
    from featbench import fit

    return fit([str(cache)], heads=list(heads), shots=list(shots), seeds=list(SEEDS), out=out, protocol="paper",
               **options)


def mean_std(values) -> str:
    """CoOp's parser: mean ± population std (ddof=0), two decimals."""
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.2f} ± {v.std(ddof=0):.2f}"


def imagenet_table(rows: list[dict], heads) -> str:
    """The README's Markdown table: one line per head, one column per shot count."""
    return markdown_table([(head, [r for r in rows if r["head"] == head]) for head in heads])


def markdown_table(labelled: list[tuple[str, list[dict]]]) -> str:
    """One line per (label, that line's rows), one column per shot count."""
    lines = ["| head | " + " | ".join(f"{k}-shot" for k in SHOTS) + " |", "|---|" + "---:|" * len(SHOTS)]
    for label, rows in labelled:
        cells = [mean_std([r["acc"] for r in rows if r["shots"] == k]) for k in SHOTS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spec_table(cache: Path, folder: Path, spec) -> str:
    """A TABLES entry: each line its own fit (its own overrides), into one results file per line."""
    labelled = []
    folder.mkdir(parents=True, exist_ok=True)
    for i, (label, head, sets) in enumerate(spec):
        rows = fit_rows(cache, folder / f"line-{i}.jsonl", (head,), SHOTS, sets=sets)
        labelled.append((label, rows))
    return markdown_table(labelled)


def b2n_sentence(rows: list[dict], heads) -> str:
    """Base / New / H per head, H = 2BN/(B+N) of the mean Base and the mean New (CoCoOp's convention)."""
    parts = []
    for head in heads:
        base = np.mean([r["acc"] for r in rows if r["head"] == head and r["classes"] == "base"])
        new_rows = [r for r in rows if r["head"] == head and r["classes"] == "new"]
        new = np.mean([r["acc"] for r in new_rows])
        h = 2 * base * new / (base + new)
        fallback = " (fallback)" if any(r.get("fallback") for r in new_rows) else ""
        prefix = "B/N/H " if not parts else ""
        parts.append(f"{LABELS[head]} {prefix}{base:.2f}/{new:.2f}{fallback}/{h:.2f}")
    return ", ".join(parts)


def compute(fixtures: Path, only=None, heads=HEADS) -> dict[str, str]:
    """{block name: Markdown} for the blocks asked for (all by default)."""
    blocks = {}
    with tempfile.TemporaryDirectory(prefix="readme-tables-") as tmp:
        cache = import_fixture(fixtures, Path(tmp))
        anchors = tuple(h for h in heads if h in HEADS)
        if only in (None, "imagenet-fixture") and anchors:
            rows = fit_rows(cache, Path(tmp) / "results.jsonl", anchors, SHOTS)
            blocks["imagenet-fixture"] = imagenet_table(rows, anchors)
        for name, spec in TABLES.items():
            lines = [line for line in spec if heads == HEADS or line[1] in heads]  # --heads: a subset's lines
            if only in (None, name) and lines:
                blocks[name] = spec_table(cache, Path(tmp) / name, lines)
        if only in (None, "b2n") and anchors:
            rows = fit_rows(cache, Path(tmp) / "b2n.jsonl", anchors, (B2N_SHOTS,), base_to_new=True)
            blocks["b2n"] = b2n_sentence(rows, anchors)
        if only in (None, "compare") and (heads == HEADS or set(COMPARE_HEADS) <= set(heads)):
            blocks["compare"] = compare_block(cache, Path(tmp))
    return blocks


def compare_block(cache: Path, folder: Path) -> str:
    """The README's `featbench compare` example: each command and the statistics lines it prints."""
    import subprocess

    heads = ",".join(COMPARE_HEADS)
    for name, seeds in (("cmp", "1,2,3"), ("one", "1")):
        fit_cli(cache, folder, f"--heads {heads} --shots 1 --seeds {seeds} --protocol paper "
                f"--out real/{name}.jsonl --save-predictions real/preds-{name}")
    out = ["```text"]
    for args in (f"real/cmp.jsonl --heads {heads}", f"real/one.jsonl --heads {heads}",
                 f"real/one.jsonl --heads {heads} --predictions real/preds-one"):
        done = subprocess.run([sys.executable, "-m", "featbench", "compare", *args.split()], cwd=folder,
                              capture_output=True, text=True, check=True)
        stats = done.stdout.split("\n\n")[0].splitlines()  # the verdict, before the per-class lists
        out += [f"$ featbench compare {args}", *stats]
    return "\n".join(out + ["```"])


def fit_cli(cache: Path, folder: Path, args: str) -> None:
    """`featbench fit` as the README writes it, in ``folder`` (its real/ holds the cache)."""
    import shutil
    import subprocess

    (folder / "real").mkdir(exist_ok=True)
    if not (folder / "real" / "imagenet.h5").exists():
        shutil.copy(cache, folder / "real" / "imagenet.h5")
    subprocess.run([sys.executable, "-m", "featbench", "fit", "real/imagenet.h5", *args.split()], cwd=folder,
                   capture_output=True, text=True, check=True)


def render(blocks: dict[str, str]) -> str:
    """The blocks as readme_tables.md holds them: each between its markers, in a fenced-free Markdown file."""
    out = ["# README figures from the real ViT-B/32 fixtures", "",
           "Written by `python benchmarks/readme_tables.py`; README.md quotes each block verbatim.", ""]
    for name, body in blocks.items():
        sep = "\n" if "\n" in body else ""
        out += [f"<!-- readme_tables:{name} -->{sep}{body}{sep}<!-- /readme_tables -->", ""]
    return "\n".join(out)


def parse(text: str) -> dict[str, str]:
    """{block name: body} of the marked blocks in a Markdown text."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def normalise(body: str) -> str:
    """Tables compare line by line; prose compares with its line breaks (README wraps it) as spaces."""
    if body.strip().startswith("|"):
        return "\n".join(line.strip() for line in body.strip().splitlines())
    return " ".join(body.split())


def parts(body: str) -> list[str]:
    """A block's rows (a table's lines after the header, a sentence's comma-separated figures)."""
    text = normalise(body)
    return text.splitlines()[2:] if text.startswith("|") else text.split(", ")


def differences(readme: str, blocks: dict[str, str], partial: bool = False) -> list[str]:
    """What README.md says differently from ``blocks``; with ``partial`` (a recomputed subset of the heads),
    only that each computed row appears in README's block."""
    found = parse(readme)
    out = []
    for name, body in blocks.items():
        if name not in found:
            out.append(f"README.md has no block readme_tables:{name}")
            continue
        want, have = normalise(body), normalise(found[name])
        if partial:
            missing = [row for row in parts(body) if row not in parts(found[name])]
            if missing:
                out.append(f"readme_tables:{name}: README lacks {missing}")
        elif want != have:
            out.append(f"readme_tables:{name}:\n  README:   {have}\n  computed: {want}")
    return out


def update(readme: str, blocks: dict[str, str]) -> str:
    """README.md with each block's body replaced (a prose block keeps README's wrapping when it is unchanged)."""
    def swap(m):
        body = blocks.get(m["name"])
        if body is None or normalise(body) == normalise(m["body"]):
            return m.group(0)
        sep = "\n" if "\n" in body else ""
        return f"<!-- readme_tables:{m['name']} -->{sep}{body}{sep}<!-- /readme_tables -->"

    return BLOCK.sub(swap, readme)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the figures")
    ap.add_argument("--saved", action="store_true", help="use benchmarks/readme_tables.md instead of computing")
    ap.add_argument("--update-readme", action="store_true", help="rewrite README.md's blocks with the figures")
    ap.add_argument("--only", choices=BLOCKS, help="compute one block")
    ap.add_argument("--heads", default=",".join(HEADS), help="compute these heads' rows only (checked as a subset)")
    args = ap.parse_args(argv)
    if args.saved:
        blocks = parse(SAVED.read_text(encoding="utf-8"))
    else:
        if not (args.fixtures / "imagenet.npz").exists():
            sys.exit(f"fixtures not found in {args.fixtures}")
        heads = tuple(h for h in args.heads.split(",") if h)
        blocks = compute(args.fixtures, only=args.only, heads=heads)
        text = render(blocks)
        print(text)
        if args.only is None and heads == HEADS and not args.check:
            SAVED.write_text(text, encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    if args.update_readme:
        README.write_text(update(readme, blocks), encoding="utf-8")
        return 0
    if args.check:
        diff = differences(readme, blocks, partial=args.heads != ",".join(HEADS))
        for line in diff:
            print(line, file=sys.stderr)
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
