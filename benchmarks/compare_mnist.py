"""Encodings side by side on the real MNIST: FC-2 at the ADTN depth-3 and depth-4 budgets and
LeNet-5's three linear layers at the depth-3 budget, through ``adtn-studio compare``.

    python benchmarks/compare_mnist.py --data-root ../shared/datasets --out /tmp/compare-mnist

Each part is one ``adtn-studio compare`` call (resumable: run the same command again to go on);
the combined table goes to ``OUT/compare-mnist.md`` and is printed. Defaults follow the
encodings issue: 5 epochs for FC-2, 3 for LeNet-5, seeds 0 and 1, Adam with a cosine schedule,
batch 128, and a learning-rate search per variant on held-out training examples.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PARTS = (
    # (name, preset, depths, epochs)
    ("fc2", "fc2-mnist", "3,4", 5),
    ("lenet5", "lenet5-mnist", "3", 3),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/compare-mnist"))
    parser.add_argument("--encodings", default="dense,adtn,tt,lowrank")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--lrs", default="0.001,0.003,0.01")
    parser.add_argument("--search-epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=[p[0] for p in PARTS], help="run one part only")
    parser.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        help="multiply every part's epochs (quick checks)",
    )
    args = parser.parse_args()
    sections = []
    for name, preset, depths, epochs in PARTS:
        if args.only and name != args.only:
            continue
        out = args.out / name
        epochs = max(1, round(epochs * args.epochs_scale))
        command = [
            sys.executable,
            "-m",
            "adtn_studio",
            "compare",
            "--preset",
            preset,
            "--encodings",
            args.encodings,
            "--depths",
            depths,
            "--seeds",
            args.seeds,
            "--epochs",
            str(epochs),
            "--lr-search",
            "--lrs",
            args.lrs,
            "--search-epochs",
            str(min(args.search_epochs, epochs)),
            "--data-root",
            args.data_root,
            "--device",
            args.device,
            "--out",
            str(out),
        ]
        print("$", " ".join(command), flush=True)
        started = time.time()
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL)
        if done.returncode not in (0, 1):
            print(f"{name}: compare exited with {done.returncode}", file=sys.stderr)
            return done.returncode
        table = (out / "compare.md").read_text(encoding="utf-8")
        sections.append(
            f"{table}\nCommand: `{' '.join(command[1:])}` "
            f"({(time.time() - started) / 60:.0f} min)\n"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    document = "\n\n".join(sections)
    (args.out / "compare-mnist.md").write_text(document, encoding="utf-8")
    print(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
