"""l1-uniform at 50% FLOPs over the whole torchvision classification zoo, beside Torch-Pruning.

The same harness as ``benchmarks/timm_zoo.py`` (see it for the details), over torchvision's
models: random weights that make every output non-zero (torchvision zero-initialises the ViT
heads, which made an error of exactly 0 "verify" them), both slim models checked by the
independent outside check, our checkpoint reloaded in a fresh process, and both tools timed
the same way (cold in fresh processes and warm in process, one thread, medians with min/max),
Torch-Pruning's ratio chosen to land near the same FLOPs. Transformers (ViT, Swin, MaxViT) count
as verified at the FLOPs they reach, which every row states.

    python benchmarks/zoo_slim.py [--models resnet50,mobilenet_v2] [--cold-reps 5] [--warm-reps 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timm_zoo import main  # noqa: E402

if __name__ == "__main__":
    main(zoo="torchvision", default_out="zoo_slim.json")
