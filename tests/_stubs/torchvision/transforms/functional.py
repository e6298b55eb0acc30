"""PIL-path equivalents of torchvision.transforms.functional.resize / to_pil_image."""
import numpy as np
import torch
from PIL import Image


def to_pil_image(pic):
    if isinstance(pic, torch.Tensor):
        pic = pic.numpy()
    if isinstance(pic, np.ndarray):
        if pic.ndim == 3 and pic.shape[-1] == 1:
            pic = pic[..., 0]
        return Image.fromarray(pic)
    raise TypeError(f"to_pil_image stand-in expects ndarray or tensor, got {type(pic)}")


def resize(img, size, interpolation=None, max_size=None, antialias=True):
    # torchvision: size is (h, w); a PIL image is resized with PIL's bilinear filter.
    if not isinstance(img, Image.Image):
        raise TypeError("resize stand-in only supports PIL images (Meta's ResizeLongestSide uses PIL)")
    h, w = int(size[0]), int(size[1])
    return img.resize((w, h), Image.BILINEAR)
