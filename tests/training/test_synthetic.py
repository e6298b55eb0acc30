"""The synthetic dataset: exact, disjoint masks; reproducible by seed."""
import numpy as np
import pytest

from sam_hf.training import build_synthetic_dataset, decode_instance_masks, render_sample


def test_masks_are_exact_and_disjoint():
    for index in range(10):
        image, masks, kinds = render_sample(rng=np.random.default_rng([7, index]), height=96, width=80,
                                            min_visible_area=20, fill_kinds=("solid",), background_kinds=("solid",))
        assert image.shape == (96, 80, 3) and masks.shape[1:] == (96, 80) and len(kinds) == len(masks) >= 1
        assert masks.sum(0).max() <= 1  # visible parts never overlap
        assert (masks.reshape(len(masks), -1).sum(1) >= 20).all()
        background = ~masks.any(0)
        for mask in list(masks) + [background]:  # each region is exactly one solid color
            if mask.any():
                assert len(np.unique(image[mask], axis=0)) == 1


def test_dataset_reproducible_and_formats_agree(tmp_path):
    kw = dict(num_images=3, seed=5, image_size=(48, 64), max_objects=4, min_visible_area=16, cache_dir=str(tmp_path))
    a = build_synthetic_dataset(**kw)
    b = build_synthetic_dataset(**kw)
    rle = build_synthetic_dataset(mask_format="rle", **kw)
    ids = build_synthetic_dataset(mask_format="id_map", **kw)
    other = build_synthetic_dataset(**dict(kw, seed=6))
    longer = build_synthetic_dataset(**dict(kw, num_images=4))
    assert a.column_names == ["image", "masks", "shapes"]
    for i in range(3):
        image = np.asarray(a[i]["image"])
        h, w = image.shape[:2]
        assert 48 <= h <= 64 and 48 <= w <= 64
        assert np.array_equal(image, np.asarray(b[i]["image"]))
        assert np.array_equal(image, np.asarray(longer[i]["image"]))  # image i depends on (seed, i) only
        masks = decode_instance_masks(a[i]["masks"], height=h, width=w)
        assert len(masks) == len(a[i]["shapes"])
        assert np.array_equal(masks, decode_instance_masks(rle[i]["masks"], height=h, width=w))
        assert np.array_equal(masks, decode_instance_masks(ids[i]["masks"], height=h, width=w))
    assert not np.array_equal(np.asarray(a[0]["image"]), np.asarray(other[0]["image"]))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="mask_format"):
        build_synthetic_dataset(num_images=1, mask_format="png")
    with pytest.raises(ValueError, match="shape_kinds"):
        build_synthetic_dataset(num_images=1, shape_kinds=("hexagon",))
