"""Files the `sam-hf` command line writes; each output appears whole or not at all.

Segment everything, per image `NAME` (Meta's scripts/amg.py layout):
- `OUT/NAME/0.png, 1.png, ...` one binary PNG per mask and `OUT/NAME/metadata.csv`, or with RLE
  `OUT/NAME.json` (the records with COCO RLE segmentations);
- `OUT/NAME_overlay.png` every mask in color over the image.
Prompted segmentation: `OUT/NAME_mask.png`, `OUT/NAME_overlay.png`, `OUT/NAME.json` (score and prompts).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np
from PIL import Image

METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)


def everything_targets(output: str, name: str, convert_to_rle: bool) -> list[str]:
    main = os.path.join(output, name + (".json" if convert_to_rle else ""))
    return [main, os.path.join(output, f"{name}_overlay.png")]


def prompted_targets(output: str, name: str) -> list[str]:
    return [os.path.join(output, f"{name}{suffix}") for suffix in ("_mask.png", "_overlay.png", ".json")]


def _publish(tmp_path: str, target: str) -> None:
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
    os.replace(tmp_path, target)


def _save_png(picture: Image.Image, target: str) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(target) or ".")
    os.close(fd)
    picture.save(tmp, format="PNG")
    _publish(tmp, target)


def _save_json(data: Any, target: str) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=os.path.dirname(target) or ".")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    _publish(tmp, target)


def _metadata_row(i: int, record: dict[str, Any]) -> str:
    values = [record["area"], *record["bbox"], *record["point_coords"][0], record["predicted_iou"],
              record["stability_score"], *record["crop_box"]]
    return ",".join([str(i), *(str(v) for v in values)])


def write_everything(records: list[dict[str, Any]], overlay: Image.Image, output: str, name: str, convert_to_rle: bool) -> None:
    """Masks (PNG folder + metadata.csv, or one JSON of COCO RLEs) and the overlay of one image."""
    main, overlay_path = everything_targets(output, name, convert_to_rle)
    if convert_to_rle:
        _save_json(records, main)
    else:
        tmp_dir = tempfile.mkdtemp(prefix=f".{name}.", dir=output)
        for i, record in enumerate(records):
            Image.fromarray(record["segmentation"].astype(np.uint8) * 255).save(os.path.join(tmp_dir, f"{i}.png"))
        with open(os.path.join(tmp_dir, "metadata.csv"), "w") as f:
            f.write("\n".join([METADATA_HEADER, *(_metadata_row(i, r) for i, r in enumerate(records))]))
        _publish(tmp_dir, main)
    _save_png(overlay, overlay_path)


def write_prompted(mask: np.ndarray, summary: dict[str, Any], overlay: Image.Image, output: str, name: str) -> None:
    """Best mask PNG, its overlay and a JSON summary (score, prompts) of one image."""
    mask_path, overlay_path, json_path = prompted_targets(output, name)
    _save_png(Image.fromarray(mask.astype(np.uint8) * 255), mask_path)
    _save_png(overlay, overlay_path)
    _save_json(summary, json_path)
