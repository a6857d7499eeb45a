"""Regenerate the README's pictures with the `scratchformer` commands themselves.

Trains two small GPTs on the default task (3-digit addition, answer reversed):
the default 2 layers and a 1-layer variant, then runs

    scratchformer viz attention <run> "123+456="      (one layer's heads is the README's attention map)
    scratchformer viz curves <run> <run1>             (the README's curves, both runs overlaid)

and copies the two PNGs to docs/images/. Usage (from the repository root):

    python scripts/readme_pictures.py [--steps 1500] [--work runs/readme-pictures]

Each command's own output (the paths it wrote) is printed as it runs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
PROMPT = "123+456="


def scratchformer(*args: str) -> list[str]:
    cmd = [sys.executable, "-m", "scratchformer", *args]
    print("$ scratchformer " + " ".join(f'"{a}"' if " " in a or "+" in a else a for a in args), flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    print(out, end="", flush=True)
    return out.splitlines()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="training steps of each run (default 1500)")
    parser.add_argument("--work", default="runs/readme-pictures", help="where the runs go (replaced)")
    args = parser.parse_args()
    work = (ROOT / args.work).resolve()
    if work.exists():
        shutil.rmtree(work)
    runs = {"2 layers": work / "gpt-2-layers", "1 layer": work / "gpt-1-layer"}
    for label, run in runs.items():
        layers = "2" if label == "2 layers" else "1"
        scratchformer("train", f"train.steps={args.steps}", f"model.n_layer={layers}", "train.threads=1",
                      "--run-dir", str(run))
    written = scratchformer("viz", "attention", str(runs["2 layers"]), PROMPT, "--out", str(work / "attention"),
                            "--no-html")
    attention = next(Path(p) for p in written if p.endswith("attention_decoder_layer1.png"))
    curves = Path(scratchformer("viz", "curves", *map(str, runs.values()), "--label", "2 layers", "--label",
                                "1 layer", "--out", str(work / "curves.png"))[-1])
    IMAGES.mkdir(parents=True, exist_ok=True)
    for src, name in ((attention, "attention_map.png"), (curves, "training_curves.png")):
        shutil.copyfile(src, IMAGES / name)
        print(f"README picture: {IMAGES / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
