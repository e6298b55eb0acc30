"""SamHfProcessor end to end: images and prompts together, save/load, Auto classes."""
import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide as MetaResize

from sam_hf.processing import SamHfImageProcessor, SamHfProcessor


def test_images_and_prompts_match_meta(rng, meta_pixel_values):
    images = [rng.randint(0, 256, size=s, dtype=np.uint8) for s in [(333, 517, 3), (129, 127, 3)]]
    points = [[[[100, 50], [400, 300]]], [[[5, 6], [120, 100]]]]
    labels = [[[1, 0]], [[1, 1]]]
    boxes = [[[10, 20, 400, 300]], [[0, 0, 126, 128]]]
    out = SamHfProcessor(SamHfImageProcessor(longest_edge=128))(images, input_points=points, input_labels=labels, input_boxes=boxes)
    assert set(out) == {"pixel_values", "original_sizes", "reshaped_input_sizes", "input_points", "input_labels", "input_boxes", "prompt_mask"}
    meta = MetaResize(128)
    for i, image in enumerate(images):
        size = image.shape[:2]
        torch.testing.assert_close(out["pixel_values"][i : i + 1], meta_pixel_values(image, 128), rtol=0, atol=0)
        torch.testing.assert_close(out["input_points"][i, 0], torch.as_tensor(meta.apply_coords(np.array(points[i][0]), size), dtype=torch.float))
        torch.testing.assert_close(out["input_boxes"][i], torch.as_tensor(meta.apply_boxes(np.array(boxes[i]), size), dtype=torch.float))


def test_images_only_has_no_prompt_keys(rng):
    out = SamHfProcessor(SamHfImageProcessor(longest_edge=64))(rng.randint(0, 256, size=(20, 30, 3), dtype=np.uint8))
    assert set(out) == {"pixel_values", "original_sizes", "reshaped_input_sizes"}


def test_prompts_without_images_use_original_sizes():
    processor = SamHfProcessor(SamHfImageProcessor(longest_edge=128))
    out = processor(original_sizes=[(333, 517)], input_points=[[[100, 50]]])
    assert out["reshaped_input_sizes"].tolist() == [[82, 128]]
    assert "pixel_values" not in out and out["input_points"].shape == (1, 1, 1, 2)


def test_save_load_round_trip(tmp_path, rng):
    processor = SamHfProcessor(SamHfImageProcessor(longest_edge=256))
    processor.save_pretrained(tmp_path)
    loaded = SamHfProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.image_processor, SamHfImageProcessor)
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    image = rng.randint(0, 256, size=(40, 70, 3), dtype=np.uint8)
    a, b = processor(image, input_points=[[[3, 4]]]), loaded(image, input_points=[[[3, 4]]])
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_auto_classes_after_import(tmp_path):
    import sam_hf  # noqa: F401  (registers the Auto classes)
    from transformers import AutoImageProcessor, AutoProcessor

    SamHfProcessor(SamHfImageProcessor(longest_edge=128)).save_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, SamHfProcessor) and processor.image_processor.longest_edge == 128
    image_processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(image_processor, SamHfImageProcessor) and image_processor.longest_edge == 128


@torch.no_grad()
def test_padded_batch_gives_each_image_its_unpadded_result(rng):
    # Ragged P across images and ragged N across prompts: the model on the padded batch equals the model on
    # each image alone, for every real prompt (padded point slots and padded prompts change nothing).
    from sam_hf import SamHfModel, config_for_variant

    model = SamHfModel(config_for_variant("tiny")).eval()
    processor = SamHfProcessor(SamHfImageProcessor(longest_edge=128))
    images = [rng.randint(0, 256, size=s, dtype=np.uint8) for s in [(90, 123, 3), (140, 77, 3)]]
    points = [[[[10, 20]], [[50, 60], [70, 30], [5, 5]]], [[[30, 40], [60, 100]]]]
    labels = [[[1], [1, 0, -1]], [[0, 1]]]
    boxes = [[[5, 5, 100, 80], [0, 0, 50, 50]], [[10, 10, 60, 130]]]
    batch = processor(images, input_points=points, input_labels=labels, input_boxes=boxes)
    out = model(**batch)
    assert batch["prompt_mask"].tolist() == [[True, True], [True, False]]
    for i in range(2):
        alone = processor(images[i], input_points=[points[i]], input_labels=[labels[i]], input_boxes=[boxes[i]])
        ref = model(**alone)
        real = batch["prompt_mask"][i]
        torch.testing.assert_close(out.pred_masks[i][real], ref.pred_masks[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.iou_scores[i][real], ref.iou_scores[0], rtol=1e-4, atol=1e-4)
