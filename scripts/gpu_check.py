"""Entry point of the GPU truth kit (``scripts/gpu-check.sh`` calls it); see docs/gpu-kit.md.

    python scripts/gpu_check.py --out DIR [--dry-run] [--deadline SECONDS] [--work DIR]

On one CUDA GPU it runs ``pytest -m gpu``, a grid of real-shape LoRA runs under the probe against
ftwatch's estimate, a real OOM through ``[monitor] budget``, the probe's overhead and event sizes,
and saves real readings as fixtures, all under ``--out`` within the deadline. ``--dry-run`` does
every stage on tiny shapes on the CPU (fake NVML, CUDA-only figures marked absent).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The kit's options."""
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="where the results go (default: $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="every stage on tiny shapes on the CPU")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds the kit may take in all (default 420 on the GPU, 240 in the dry run)")
    parser.add_argument("--work", default=None, help="scratch directory (default: a new one under the temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse the options, put ``src`` and ``scripts`` on the path, run the kit."""
    args = parse_args(argv)
    if not args.out:
        print("gpu_check.py: --out (or $OUT) names the results directory", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu-kit-work-"))
    work.mkdir(parents=True, exist_ok=True)
    for path in (str(REPO / "src"), str(REPO / "scripts")):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ.setdefault("FTWATCH_HOME", str(work / "ftwatch-home"))
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the dry run never touches a GPU, even where one exists
    deadline = args.deadline if args.deadline is not None else (240.0 if args.dry_run else 420.0)
    from gpu_kit.main import main as kit_main

    return kit_main(REPO, out, work, args.dry_run, deadline)


if __name__ == "__main__":
    sys.exit(main())
