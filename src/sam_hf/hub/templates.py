"""Model-card bodies (Markdown with `{field}` slots); the YAML header is built from `ModelCardData`."""

CITATION = r"""```bibtex
@article{kirillov2023segany,
  title   = {Segment Anything},
  author  = {Kirillov, Alexander and Mintun, Eric and Ravi, Nikhila and Mao, Hanzi and Rolland, Chloe and
             Gustafson, Laura and Xiao, Tete and Whitehead, Spencer and Berg, Alexander C. and Lo, Wan-Yen and
             Doll{\'a}r, Piotr and Girshick, Ross},
  journal = {arXiv:2304.02643},
  year    = {2023}
}
```"""

USAGE = """```python
import sam_hf  # registers model_type "sam_hf" with transformers' Auto classes
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

model = AutoModel.from_pretrained("{repo_id}")
processor = AutoProcessor.from_pretrained("{repo_id}")
image = Image.open("image.png").convert("RGB")
inputs = processor(image, input_points=[[[{point_x}, {point_y}]]], return_tensors="pt")
outputs = model(**inputs)
masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])

# segment everything with Meta's full algorithm: one record per mask (segmentation, area, bbox, predicted_iou, ...)
generator = pipeline("mask-generation", model="{repo_id}", pipeline_class=sam_hf.SamHfMaskGenerationPipeline)
records = generator(image)
# transformers' stock class runs too (pipeline("mask-generation", model="{repo_id}")): its own output, 1.6-3x slower on a CPU
```"""

TRAINED = """# {model_name}

A Segment Anything (SAM) model in the `sam_hf` format, {provenance}.

## Model

{architecture}

## How it was trained

{training}

```bash
{command}
```

## Results

{results}

## Usage

{usage}

## Citation

{citation}
"""

CONVERTED = """# {model_name}

Meta's Segment Anything **{variant_title}** weights (`{checkpoint}`) converted to the `sam_hf` format with
`sam_hf.checkpoints` (strict: every source key consumed, every target key produced). The weights are
Meta's, unchanged; they were trained on SA-1B (11M images, 1.1B masks) as described in the paper.

## Model

{architecture}

## Conversion

```bash
{command}
```

## Results

{results}

## Usage

{usage}

## Citation

{citation}
"""
