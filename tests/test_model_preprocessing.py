"""Models own their pre- and post-processing: normalisation inside, boxes back to the original images,
segmentation padded and cropped back in one place, and the weights' record deciding the settings."""

from __future__ import annotations

import warnings

import albumentations as A
from PIL import Image
import numpy as np
import pytest
import torch
import torchvision

import backbones
from vision_tasks.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocessing,
    build_model,
    deeplabv3_mobilenet_v2,
    describe_weights,
    mobilenet_v2_classifier,
    model_from_weights,
    scale_boxes,
    ssdlite_mobilenet_v2,
)


def _rgb(seed: int, size=(37, 53)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0)


@pytest.mark.parametrize("normalization, grayscale", [("standard", False), ("standard", True), ("image", False),
                                                      ("image", True), ("image_per_channel", False)])
def test_preprocessing_matches_albumentations(normalization, grayscale):
    """The model-side normalisation computes what the data pipelines computed before (albumentations)."""
    image = _rgb(0)
    steps = [A.ToGray(num_output_channels=3, p=1.0)] if grayscale else []
    steps.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0, normalization=normalization))
    expected = torch.from_numpy(A.Compose(steps)(image=image)["image"].astype(np.float32)).permute(2, 0, 1)
    got = ImagePreprocessing(IMAGENET_MEAN, IMAGENET_STD, normalization, grayscale)(_tensor(image))[0]
    # albumentations rounds the grey image to uint8: half a grey level, divided by the std, apart
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-2 if grayscale else 1e-4)


def test_uint8_input_equals_float_input_and_bad_input_is_named():
    pre = ImagePreprocessing()
    image = _rgb(1)
    uint8 = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
    torch.testing.assert_close(pre(uint8), pre(_tensor(image)))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        pre(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="float images in \\[0, 1\\] or uint8"):
        pre(torch.ones(1, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="normalization must be one of"):
        ImagePreprocessing(normalization="min_max")
    with pytest.raises(ValueError, match="three numbers"):
        ImagePreprocessing(mean=(0.5, 0.5))


def test_normalisation_is_in_the_config_not_the_state_dict():
    model = mobilenet_v2_classifier(num_classes=4, width_mult=0.35, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert model.config["mean"] == [0.5, 0.5, 0.5] and model.config["normalization"] == "standard"
    assert not any("preprocess" in key for key in model.state_dict())  # weight files keep torchvision's keys
    rebuilt = build_model("MobileNetV2Classifier", model.config)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_torchvision_weights_set_imagenet_normalisation_and_give_torchvision_logits(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(width_mult=0.5).eval()
    path = tmp_path / "mobilenet_v2-b0353104.pth"  # the name of torchvision's V1 release
    torch.save(tv.state_dict(), path)
    info = describe_weights(path)
    assert info.kind == "torchvision" and info.padding == "symmetric" and info.input_size == 224
    assert info.preprocessing["mean"] == list(IMAGENET_MEAN) and info.class_names[0] == "tench"
    assert info.metrics["imagenet_acc1"] == pytest.approx(71.878)
    model = mobilenet_v2_classifier(width_mult=0.5, weights=path).eval()
    x = torch.rand(2, 3, 96, 96)
    normalised = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(normalised), rtol=0, atol=1e-4)


def test_explicit_settings_win_over_the_weights(tmp_path):
    torch.save(torchvision.models.mobilenet_v2(width_mult=0.35).state_dict(), tmp_path / "tv.pth")
    model = ssdlite_mobilenet_v2(num_classes=3, width_mult=0.35, backbone_weights=tmp_path / "tv.pth",
                                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), padding="tf_same")
    assert model.config["mean"] == [0.5, 0.5, 0.5] and model.config["padding"] == "tf_same"
    assert model.backbone.padding == "tf_same"


def test_plain_state_dict_of_ours_keeps_the_configured_settings(tmp_path):
    source = deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35)
    torch.save(source.state_dict(), tmp_path / "ours.pth")
    assert describe_weights(tmp_path / "ours.pth").kind == "state_dict"
    model = deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35, weights=tmp_path / "ours.pth", normalization="image")
    assert model.config["normalization"] == "image" and model.config["padding"] == "symmetric"
    with pytest.raises(backbones.WeightsError, match="does not say which model it holds"):
        model_from_weights(tmp_path / "ours.pth")


def test_detector_returns_boxes_in_original_pixels():
    torch.manual_seed(0)
    model = ssdlite_mobilenet_v2(num_classes=2, width_mult=0.35, score_thresh=0.0).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(images)
        scaled = model(images, original_sizes=[(128, 32), (64, 64)])
    torch.testing.assert_close(scaled[0]["boxes"], plain[0]["boxes"] * torch.tensor([0.5, 2.0, 0.5, 2.0]))
    torch.testing.assert_close(scaled[1]["boxes"], plain[1]["boxes"])
    assert scaled[0]["boxes"][:, 3].max() <= 128 and scaled[0]["boxes"][:, 2].max() <= 32
    torch.testing.assert_close(scale_boxes(torch.tensor([[10.0, 10, 20, 20]]), (100, 50), (200, 100)),
                               torch.tensor([[20.0, 20, 40, 40]]))
    with pytest.raises(ValueError, match="original_sizes has 1 entries for 2 images"):
        model(images, original_sizes=[(10, 10)])


def test_segment_pads_with_the_mean_pixel_and_crops_back():
    """segment() = normalise each image, pad with 0 (the mean after normalisation), run, crop back."""
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35).eval()
    small, tall = torch.rand(3, 40, 56), torch.rand(3, 72, 30)
    with torch.no_grad():
        logits = model.segment([small, tall], pad_to=80)
        assert [tuple(l.shape) for l in logits] == [(3, 40, 56), (3, 72, 30)]
        # the same as padding the normalised image by hand with zeros to 80x80 and cropping
        padded = torch.nn.functional.pad(model.preprocess(small[None]), (0, 24, 0, 40))
        torch.testing.assert_close(logits[0], model.logits(padded)[0, :, :40, :56])
        # the mean pixel in [0, 1] units normalises to 0: padding with it before the model is the same
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        by_hand = torch.cat([small, mean.expand(3, 40, 24)], dim=2)
        by_hand = torch.cat([by_hand, mean.expand(3, 40, 80)], dim=1)
        torch.testing.assert_close(model(by_hand[None])[0, :, :40, :56], logits[0], rtol=1e-4, atol=1e-4)
        # no padding asked, images of one size: the plain forward
        same = model.segment(torch.stack([small, small]))
        torch.testing.assert_close(same[1], model(small[None])[0])


def test_checkpoints_and_records_of_the_first_wave_still_load(tmp_path):
    """Before the models owned their normalisation, checkpoints kept it in the data module's hyperparameters and
    the converter's JSON under "preprocessing": both are read into the model's configuration."""
    import json

    from vision_tasks.checkpoints import model_from_checkpoint

    source = mobilenet_v2_classifier(num_classes=8, width_mult=0.35)
    old_config = {k: v for k, v in source.config.items() if k not in ("mean", "std", "normalization", "grayscale",
                                                                         "round_nearest")}
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
        "vision_tasks": {"task": "classification", "model_class": "MobileNetV2Classifier", "model_config": old_config,
                         "class_names": [f"c{i}" for i in range(8)]},
        "datamodule_hyper_parameters": {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "normalization": "image",
                                        "grayscale": True, "image_size": 64},
    }
    torch.save(checkpoint, tmp_path / "old.ckpt")
    model, meta = model_from_checkpoint(tmp_path / "old.ckpt", expected_task="classification")
    assert model.config["normalization"] == "image" and model.config["grayscale"] is True
    assert meta["model_config"]["mean"] == [0.5, 0.5, 0.5] and meta["class_names"][0] == "c0"
    info = describe_weights(tmp_path / "old.ckpt")
    assert info.kind == "checkpoint" and info.input_size == 64 and info.task == "classification"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source.eval().backbone(model.preprocess(x))["layer19"].mean((2, 3))
                                   @ source.head.fc.weight.T + source.head.fc.bias)

    # the first converter's JSON (version 1): preprocessing beside the model configuration
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "old.safetensors"))
    (tmp_path / "old.json").write_text(json.dumps({
        "version": 1, "source": "x.ckpt", "model_class": "MobileNetV2Classifier", "model_config": old_config,
        "class_names": None, "preprocessing": {"mean": [0.5] * 3, "std": [0.5] * 3, "normalization": "standard",
                                               "input_size": 224, "padding": "tf_same"}}))
    model, info = model_from_weights(tmp_path / "old.safetensors")
    assert info.padding == "tf_same" and info.input_size == 224 and model.config["mean"] == [0.5] * 3


def test_drawings_show_each_object_once_and_name_the_mask_colours():
    from vision_tasks.predict import draw_detections, draw_legend

    image = np.zeros((120, 160, 3), dtype=np.uint8)
    detection = {"boxes": torch.tensor([[10.0, 10, 60, 60], [11, 11, 61, 61], [80, 20, 150, 100], [0, 0, 5, 5]]),
                 "scores": torch.tensor([0.9, 0.6, 0.8, 0.1]), "labels": torch.tensor([0, 1, 1, 0])}
    drawn = np.asarray(draw_detections(image, detection, ["cat", "dog"], score_thresh=0.3))
    assert drawn.shape == image.shape
    colours = {tuple(c) for c in drawn.reshape(-1, 3).tolist()} - {(0, 0, 0)}
    # the second box (dog on the cat, IoU 0.92) is left out: the cat's colour and the far dog's are drawn
    from vision_tasks.predict import _palette

    cat, dog = _palette(2)
    assert {cat, dog} <= colours
    assert not (drawn[:, :75] == dog).all(axis=-1).any()  # no dog box on the cat: one caption per object
    assert not drawn[:8, :8].any()  # the box scoring 0.1 is not drawn
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing above the threshold: the photo unchanged, and no torchvision warning
        empty = np.asarray(draw_detections(image + 7, detection, ["cat", "dog"], score_thresh=0.95))
    assert (empty == 7).all()
    legend = draw_legend(Image.fromarray(image), [("person", (192, 128, 128), 0.25), ("car", (64, 128, 128), 0.004)])
    assert legend.width == 160 and legend.height > 120
    below = np.asarray(legend)[120:]
    assert (below == [192, 128, 128]).all(axis=-1).any() and (below == [64, 128, 128]).all(axis=-1).any()
