"""examples/finetune.py end to end on the tiny config: learning, exact resume, two CPU processes."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "finetune.py")
TINY = ["--config_variant", "tiny", "--synthetic_eval", "4", "--synthetic_image_size", "64", "96"]


def _run(args, *, launcher=None, env=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", **(env or {})}
    command = (launcher or [sys.executable]) + [SCRIPT] + args
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _script():
    """examples/finetune.py imported as a module (its parse_args, build_config, ...)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(output_dir):
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _weights(output_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(output_dir, "model.safetensors"))


def test_short_run_lowers_loss_and_raises_iou(tmp_path):
    out = str(tmp_path / "run")
    # Dice and IoU terms only: from scratch, the paper's 20 x focal first drives every logit negative
    # for a few hundred steps before masks appear, too long for a test.
    _run(["--synthetic", "16", *TINY, "--max_train_steps", "100", "--per_device_train_batch_size", "4",
          "--learning_rate", "3e-3", "--focal_weight", "0", "--max_refinement_rounds", "0", "--lr_scheduler_type", "constant",
          "--logging_steps", "20", "--output_dir", out])
    train = [r for r in _log(out) if "loss" in r]
    assert [r["step"] for r in train] == [20, 40, 60, 80, 100]
    assert train[-1]["loss"] < train[0]["loss"] - 0.05
    assert train[-1]["train_mask_iou"] > train[0]["train_mask_iou"] + 0.03
    final = _log(out)[-1]
    assert final["step"] == 100 and 0 <= final["eval_box_miou"] <= 1 and final["eval_instances"] > 0
    for name in ("config.json", "model.safetensors", "README.md"):
        assert os.path.exists(os.path.join(out, name))
    card = open(os.path.join(out, "README.md")).read()
    assert "pipeline_tag: mask-generation" in card and "library_name: transformers" in card and "eval_box_miou" in card

    import sam_hf  # noqa: F401  (the saved folder loads back through the Auto classes)
    from transformers import AutoModel, AutoProcessor

    model, processor = AutoModel.from_pretrained(out), AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == "SamHfModel" and processor.longest_edge == 128


def test_interrupted_run_resumes_exactly(tmp_path):
    common = ["--synthetic", "12", *TINY, "--max_train_steps", "6", "--per_device_train_batch_size", "2",
              "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3", "--logging_steps", "1",
              "--checkpointing_steps", "2"]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    _run(common + ["--output_dir", straight])
    _run(common + ["--output_dir", resumed, "--stop_after_steps", "3"])  # interrupted after step 3
    assert os.path.isdir(os.path.join(resumed, "step_3")) and not os.path.exists(os.path.join(resumed, "model.safetensors"))
    from sam_hf import SamHfModel, SamHfProcessor  # a checkpoint folder also loads as a model, with its processor

    checkpoint = os.path.join(resumed, "step_3")
    loaded = SamHfModel.from_pretrained(checkpoint).state_dict()
    saved = _weights(checkpoint)
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert SamHfProcessor.from_pretrained(checkpoint).image_processor.longest_edge == 128
    _run(common + ["--output_dir", resumed, "--resume_from_checkpoint", "latest"])
    steps = [r["step"] for r in _log(resumed) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # no step repeated or skipped
    losses = {r["step"]: r["loss"] for r in _log(straight) if "loss" in r}
    assert losses == {r["step"]: r["loss"] for r in _log(resumed) if "loss" in r}
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_resumed_run_logs_the_loss_records_of_an_uninterrupted_one(tmp_path):
    # Checkpoints between two loss records (every 3 steps, records every 2): the micro-batches not yet logged are
    # saved with the checkpoint, so the first record after a resume averages those since the previous record.
    common = ["--synthetic", "12", *TINY, "--max_train_steps", "6", "--per_device_train_batch_size", "2",
              "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3", "--logging_steps", "2",
              "--checkpointing_steps", "3"]
    straight, resumed, legacy = str(tmp_path / "straight"), str(tmp_path / "resumed"), str(tmp_path / "legacy")
    _run(common + ["--output_dir", straight])
    _run(common + ["--output_dir", resumed, "--stop_after_steps", "3"])  # saved by --checkpointing_steps
    shutil.copytree(resumed, legacy)
    _run(common + ["--output_dir", resumed, "--resume_from_checkpoint", "latest", "--stop_after_steps", "2"])  # saved at the stop
    _run(common + ["--output_dir", resumed, "--resume_from_checkpoint", "latest"])
    for checkpoint, pairs in (("step_3", 2), ("step_5", 2)):  # step 3's and step 5's two micro-batches, not yet logged
        with open(os.path.join(resumed, checkpoint, "unlogged_losses_0.json")) as f:
            assert len(json.load(f)["unlogged"]) == pairs
    expected = [r for r in _log(straight) if "loss" in r]
    assert [r["step"] for r in expected] == [2, 4, 6]
    records = [r for r in _log(resumed) if "loss" in r]
    assert [r["step"] for r in records] == [2, 3, 4, 5, 6]  # 3 and 5: the partial records of the two stopped runs
    got = [r for r in records if r["step"] % 2 == 0]
    for a, b in zip(expected, got):
        assert a.keys() == b.keys() and a["epoch"] == b["epoch"]
        for key in ("loss", "train_mask_iou", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["step"], key)

    # A checkpoint from before the unlogged losses were saved resumes as it did then, and says so: the first
    # record after it averages step 4 only (the stopped run's partial record at step 3 had step 3).
    os.remove(os.path.join(legacy, "step_3", "unlogged_losses_0.json"))
    result = _run(common + ["--output_dir", legacy, "--resume_from_checkpoint", "latest"])
    assert "holds no unlogged_losses_0.json" in result.stderr
    old = {r["step"]: r for r in _log(legacy) if "loss" in r}
    assert sorted(old) == [2, 3, 4, 6]
    for key in ("loss", "train_mask_iou"):
        assert old[4][key] != pytest.approx(expected[1][key], rel=1e-4)
        assert (old[3][key] + old[4][key]) / 2 == pytest.approx(expected[1][key], rel=1e-5)
        assert old[6][key] == pytest.approx(expected[2][key], rel=1e-6, abs=1e-9)


# Two gloo processes on the CPU, as docs/training.md says: torchrun, with Accelerate's CPU switch. Not
# `accelerate launch --cpu --num_processes 2`: accelerate 1.16 starts CPU processes only through mpirun
# (--mpirun_hostfile), so that runs ONE process. Nor torchrun (or `accelerate launch --multi_gpu`) without
# ACCELERATE_USE_CPU=true on a machine without GPUs: each process is then DistributedType.NO, an independent run.
TWO_CPU_PROCESSES = {"launcher": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                     "env": {"ACCELERATE_USE_CPU": "true"}}


def test_two_cpu_processes(tmp_path):
    pytest.importorskip("accelerate")
    out, single = str(tmp_path / "ddp"), str(tmp_path / "single")
    # 8 training images, 2 per process and step: 2 steps per epoch. 5 held-out images, 2 per process and batch: the
    # last batch is padded on one process, and gather_for_metrics must drop the padding.
    data = ["--synthetic", "8", "--synthetic_eval", "5", "--synthetic_image_size", "64", "96", "--per_device_eval_batch_size", "2"]
    result = _run([*data, "--config_variant", "tiny", "--max_train_steps", "3", "--per_device_train_batch_size", "2", "--logging_steps", "2",
                   "--eval_steps", "2", "--checkpointing_steps", "3", "--output_dir", out], **TWO_CPU_PROCESSES)
    log = result.stdout + result.stderr
    assert log.count("Distributed environment: DistributedType.MULTI_CPU  Backend: gloo") == 2, log[-3000:]
    assert log.count("Num processes: 2") == 2 and "Process index: 0" in log and "Process index: 1" in log

    # Each process saved its own state: random states and the losses not yet logged (step 3's micro-batch).
    checkpoint = os.path.join(out, "step_3")
    unlogged = []
    for index in (0, 1):
        assert os.path.exists(os.path.join(checkpoint, f"random_states_{index}.pkl"))
        with open(os.path.join(checkpoint, f"unlogged_losses_{index}.json")) as f:
            record = json.load(f)
        assert record["process_index"] == index and record["num_processes"] == 2 and len(record["unlogged"]) == 1
        unlogged.append(record["unlogged"][0])
    assert not os.path.exists(os.path.join(checkpoint, "unlogged_losses_2.json"))
    assert unlogged[0][0] != unlogged[1][0]  # different shards of the data

    # log.jsonl is written by the main process only, once per record; a record averages the two processes' losses
    # (step 3's record is partial: the run ends between two records, so it holds step 3's micro-batches only).
    log = _log(out)
    train = [r for r in log if "loss" in r]
    assert [r["step"] for r in train] == [2, 3]
    assert train[1]["loss"] == pytest.approx((unlogged[0][0] + unlogged[1][0]) / 2, rel=1e-6)
    assert train[1]["train_mask_iou"] == pytest.approx((unlogged[0][1] + unlogged[1][1]) / 2, rel=1e-6, abs=1e-9)
    evals = [r for r in log if "eval_instances" in r]
    assert [r["step"] for r in evals] == [2, 3] and evals[0]["eval_instances"] == evals[1]["eval_instances"] > 0
    assert os.path.exists(os.path.join(out, "model.safetensors")) and os.path.exists(os.path.join(out, "README.md"))

    # One process evaluating the saved model on the same held-out images measures what the two processes measured:
    # every instance counted once, none twice.
    _run([*data, "--model_name_or_path", out, "--max_train_steps", "0", "--output_dir", single])
    (alone,) = _log(single)
    assert alone["eval_instances"] == evals[1]["eval_instances"]
    for key in ("eval_point_miou", "eval_box_miou"):
        assert alone[key] == pytest.approx(evals[1][key], rel=1e-5), key


def test_fan_in_init_gives_mask_logits_that_can_learn():
    # transformers' N(0, 0.02) leaves a narrow model's mask logits near 1e-4 (no gradient reaches the mask
    # path); --init fan_in must give logits of order one that depend on the prompt.
    finetune = _script()
    from sam_hf import SamHfModel

    args = finetune.parse_args(["--synthetic", "4", "--output_dir", "unused", "--image_size", "128", "--patch_size", "8",
                                "--vision_hidden_size", "32", "--vision_layers", "1", "--vision_heads", "2",
                                "--global_attn_indexes", "0", "--prompt_dim", "32", "--init", "fan_in"])
    assert args.init == "fan_in" and finetune.build_config(args).prompt_encoder_config.image_embedding_size == 16
    torch.manual_seed(0)
    model = SamHfModel(finetune.build_config(args)).eval()
    boxes = torch.tensor([[[0.0, 0.0, 50.0, 50.0], [70.0, 70.0, 127.0, 127.0]]])
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        small = model(pixel_values=pixels, input_boxes=boxes, multimask_output=False).pred_masks[0, :, 0]
        finetune.init_from_scratch(model)
        fan_in = model(pixel_values=pixels, input_boxes=boxes, multimask_output=False).pred_masks[0, :, 0]
    assert small.abs().mean() < 0.01
    assert fan_in.abs().mean() > 0.05 and (fan_in[0] - fan_in[1]).abs().mean() > 0.05


def test_loaded_model_moves_to_a_larger_image_size(tmp_path):
    from sam_hf import SamHfImageProcessor, SamHfModel, SamHfProcessor, config_for_variant

    base = str(tmp_path / "base")
    SamHfModel(config_for_variant("tiny")).save_pretrained(base)
    SamHfProcessor(image_processor=SamHfImageProcessor(longest_edge=128, pixel_mean=[100.0, 110.0, 120.0])).save_pretrained(base)
    out = str(tmp_path / "resized")
    _run(["--synthetic", "4", "--synthetic_eval", "2", "--synthetic_image_size", "64", "96", "--model_name_or_path", base,
          "--image_size", "192", "--trainable", "all", "--max_train_steps", "1", "--per_device_train_batch_size", "2",
          "--output_dir", out])
    model, processor = SamHfModel.from_pretrained(out), SamHfProcessor.from_pretrained(out)
    assert model.config.vision_config.image_size == model.config.prompt_encoder_config.image_size == 192
    assert model.vision_encoder.pos_embed.shape[1:3] == (12, 12)
    assert processor.image_processor.longest_edge == 192 and processor.image_processor.pixel_mean == [100.0, 110.0, 120.0]


def test_architecture_flags_with_a_loaded_model_are_refused(capsys):
    finetune = _script()
    with pytest.raises(SystemExit):
        finetune.parse_args(["--synthetic", "4", "--output_dir", "unused", "--model_name_or_path", "m", "--patch_size", "8"])
    assert "--patch_size" in capsys.readouterr().err
    args = finetune.parse_args(["--synthetic", "4", "--output_dir", "unused", "--model_name_or_path", "m", "--image_size", "256"])
    assert args.image_size == 256


def test_zero_steps_only_converts_evaluates_and_saves(tmp_path):
    # --max_train_steps 0: the loaded model moved to another input size, evaluated and saved, no weight trained
    from sam_hf import SamHfImageProcessor, SamHfModel, SamHfProcessor, config_for_variant
    from sam_hf.training import resize_image_size

    base = str(tmp_path / "base")
    torch.manual_seed(0)
    original = SamHfModel(config_for_variant("tiny"))
    original.save_pretrained(base)
    SamHfProcessor(image_processor=SamHfImageProcessor(longest_edge=128)).save_pretrained(base)
    out = str(tmp_path / "converted")
    _run(["--synthetic", "4", "--synthetic_eval", "2", "--synthetic_image_size", "64", "96", "--model_name_or_path", base,
          "--image_size", "192", "--trainable", "all", "--max_train_steps", "0", "--learning_rate", "1e-2",
          "--per_device_train_batch_size", "2", "--output_dir", out])
    saved = _weights(out)
    expected = resize_image_size(original, image_size=192).state_dict()
    assert "vision_encoder.pos_embed" in saved and set(saved) <= set(expected)
    for key, value in saved.items():
        assert torch.equal(value, expected[key]), key
    assert SamHfProcessor.from_pretrained(out).image_processor.longest_edge == 192
    records = _log(out)
    assert [r["step"] for r in records] == [0] and records[0]["eval_instances"] > 0  # evaluated, never stepped
    assert "No optimizer step was taken" in open(os.path.join(out, "README.md")).read()


def test_negative_or_untargeted_zero_steps_are_refused(capsys):
    finetune = _script()
    for flags in (["--model_name_or_path", "m", "--max_train_steps", "-1"], ["--config_variant", "tiny", "--max_train_steps", "0"]):
        with pytest.raises(SystemExit):
            finetune.parse_args(["--synthetic", "4", "--output_dir", "unused", *flags])
        assert "--max_train_steps" in capsys.readouterr().err


def test_encoder_training_with_checkpointing_under_bf16_autocast(tmp_path):
    """`--gradient_checkpointing` and Accelerate's `--mixed_precision bf16` (torch.autocast) together, every weight trained."""
    out = str(tmp_path / "run")
    _run(["--synthetic", "8", *TINY, "--max_train_steps", "3", "--per_device_train_batch_size", "2", "--trainable", "all",
          "--gradient_checkpointing", "1", "--mixed_precision", "bf16", "--logging_steps", "1", "--output_dir", out])
    train = [r for r in _log(out) if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in train)  # finite, not NaN
    weights = _weights(out)
    assert all(w.dtype == torch.float32 for w in weights.values())  # autocast leaves the weights in fp32
