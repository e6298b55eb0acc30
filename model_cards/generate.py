#!/usr/bin/env python
"""Regenerate the cards in this folder from sam_hf.hub's templates.

    python model_cards/generate.py

Writes one card per converted Meta checkpoint (sam-hf-vit-{b,l,h}.md). The shipped model's card
(sam-hf-shapes-352.md) is written by examples/finetune.py into the model folder, with its measured
numbers; this script copies it here when models/sam-hf-shapes-352/README.md exists.
"""

from __future__ import annotations

import os
import shutil

from sam_hf import config_for_variant
from sam_hf.hub import conversion_model_card
from sam_hf.variants import META_CHECKPOINTS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main() -> None:
    for variant, checkpoint in META_CHECKPOINTS.items():
        name = f"sam-hf-{variant.replace('_', '-')}"
        command = f"python conversion/convert_meta_checkpoint.py {checkpoint} --variant {variant} --output {name}"
        card = conversion_model_card(variant=variant, config=config_for_variant(variant), command=command, repo_id=name)
        card.save(os.path.join(HERE, f"{name}.md"))
        print(f"wrote model_cards/{name}.md")
    shipped = os.path.join(ROOT, "models", "sam-hf-shapes-352", "README.md")
    if os.path.exists(shipped):
        shutil.copyfile(shipped, os.path.join(HERE, "sam-hf-shapes-352.md"))
        print("copied models/sam-hf-shapes-352/README.md")


if __name__ == "__main__":
    main()
