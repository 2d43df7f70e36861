"""Eval preprocessing against the projects checkpoints come from: timm's and open_clip's eval transforms
pixel for pixel (torch.equal), transformers' image processors to within measured bounds.

Every pipeline is fed the same RGB PIL image, as torchvision's ImageFolder loader gives (it converts
to RGB); vitfast's eval transform converts other modes itself, checked below against that conversion.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from vitfast.data import (CROP_MODES, INTERPOLATIONS, IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD,
                          DataError, TransformConfig, build_transform, clip_transform_config, eval_transform_config,
                          preprocess_from_hf, preprocess_from_open_clip, preprocess_from_timm)

# (height, width): odd, square, landscape, portrait, tiny, 1×1
SIZES = [(37, 53), (199, 300), (224, 224), (333, 500), (53, 37), (256, 257), (1, 1)]


def _noise(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng([seed, height, width])
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


IMAGES = [_noise(h, w) for h, w in SIZES]


def _vitfast(preprocess: dict):
    return build_transform(eval_transform_config(preprocess), False)


def _assert_same(reference, ours, images=IMAGES):
    for image in images:
        expected, got = reference(image), ours(image)
        assert got.dtype == expected.dtype == torch.float32
        assert got.shape == expected.shape, (image.size, got.shape, expected.shape)
        assert torch.equal(got, expected), (image.size, (got - expected).abs().max().item())


# --------------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------------

def _timm_cfg(name: str, **changes) -> dict:
    import timm

    return {**timm.models.get_pretrained_cfg(name).to_dict(), **changes}


def _timm_transform(pretrained_cfg: dict):
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, pretrained_cfg=pretrained_cfg))


TIMM_CFGS = {
    "vit_augreg2": ("vit_base_patch16_224.augreg2_in21k_ft_in1k", {}),  # crop_pct 0.9, bicubic, mean/std 0.5
    "swin": ("swin_tiny_patch4_window7_224.ms_in1k", {}),  # crop_pct 0.9, ImageNet mean/std, bicubic
    "vit_384": ("vit_base_patch16_384.augreg_in21k_ft_in1k", {}),  # input 384, crop_pct 1.0
    "convnext_384_squash": ("convnext_tiny.fb_in22k_ft_in1k_384", {}),  # crop_mode squash, crop_pct 1.0
    "resnet_a1": ("resnet50.a1_in1k", {}),  # crop_pct 0.95, test_input_size 288 (ignored, as timm by default)
    "bilinear": ("vit_base_patch16_224.augreg2_in21k_ft_in1k", {"interpolation": "bilinear"}),
    "squash": ("vit_base_patch16_224.augreg2_in21k_ft_in1k", {"crop_mode": "squash", "crop_pct": 0.85}),
    "border": ("vit_base_patch16_224.augreg2_in21k_ft_in1k", {"crop_mode": "border", "crop_pct": 0.95}),
    "crop_pct_above_1": ("vit_base_patch16_224.augreg2_in21k_ft_in1k", {"crop_pct": 1.15}),  # crop pads
    "non_square": ("vit_base_patch16_224.augreg2_in21k_ft_in1k", {"input_size": (3, 160, 224)}),
    "non_square_border": ("vit_base_patch16_224.augreg2_in21k_ft_in1k",
                          {"input_size": (3, 160, 224), "crop_mode": "border"}),
    "non_square_squash": ("vit_base_patch16_224.augreg2_in21k_ft_in1k",
                          {"input_size": (3, 160, 224), "crop_mode": "squash", "crop_pct": 0.8}),
}


@pytest.mark.parametrize("key", list(TIMM_CFGS))
def test_timm_pixel_exact(key):
    name, changes = TIMM_CFGS[key]
    cfg = _timm_cfg(name, **changes)
    _assert_same(_timm_transform(cfg), _vitfast(preprocess_from_timm(cfg)))


@pytest.mark.parametrize("crop_mode", CROP_MODES)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_timm_every_interpolation_and_crop_mode(interpolation, crop_mode):
    cfg = {"input_size": (3, 64, 64), "interpolation": interpolation, "crop_mode": crop_mode, "crop_pct": 0.9,
           "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    _assert_same(_timm_transform(cfg), _vitfast(preprocess_from_timm(cfg)), IMAGES[:3])


def test_timm_defaults_filled_as_resolve_data_config():
    from timm.data import resolve_data_config

    for cfg in ({"num_classes": 10}, {"input_size": [3, 96, 96], "crop_pct": None, "interpolation": "", "mean": None}):
        resolved = resolve_data_config({}, pretrained_cfg=cfg)
        ours = preprocess_from_timm(cfg)
        assert ours == {"input_size": list(resolved["input_size"]), "interpolation": resolved["interpolation"],
                        "mean": list(resolved["mean"]), "std": list(resolved["std"]),
                        "crop_pct": resolved["crop_pct"], "crop_mode": resolved["crop_mode"]}
    assert preprocess_from_timm({}) == {"input_size": [3, 224, 224], "interpolation": "bicubic",
                                        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "crop_pct": 0.875,
                                        "crop_mode": "center"}
    # a Hub repo's whole config.json is taken too, and the dict is plain JSON
    cfg = _timm_cfg("vit_base_patch16_224.augreg2_in21k_ft_in1k")
    wrapped = {"architecture": "vit_base_patch16_224", "num_classes": 1000, "pretrained_cfg": cfg}
    assert preprocess_from_timm(wrapped) == preprocess_from_timm(cfg)
    assert json.loads(json.dumps(preprocess_from_timm(cfg))) == preprocess_from_timm(cfg)
    assert preprocess_from_timm(cfg) == {"input_size": [3, 224, 224], "interpolation": "bicubic",
                                         "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 0.9,
                                         "crop_mode": "center"}


def test_default_transform_config_eval_is_timms():
    """vitfast's own default (bilinear, crop_pct 0.875, ImageNet mean/std) is timm's eval with those values."""
    cfg = {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 0.875}
    _assert_same(_timm_transform(cfg), build_transform(TransformConfig(32), train=False))


def test_other_image_modes_convert_to_rgb_as_imagefolder():
    """RGBA, L and P images give what their RGB conversion gives (what ImageFolder's loader feeds timm)."""
    cfg = _timm_cfg("vit_base_patch16_224.augreg2_in21k_ft_in1k")
    timm_t, ours = _timm_transform(cfg), _vitfast(preprocess_from_timm(cfg))
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (45, 61, 4), dtype=np.uint8), "RGBA")
    grey = Image.fromarray(rng.integers(0, 256, (45, 61), dtype=np.uint8), "L")
    for image in (rgba, grey, rgba.convert("P")):
        rgb = image.convert("RGB")
        assert torch.equal(ours(image), timm_t(rgb))
        assert torch.equal(ours(image), ours(rgb))
    # uint8 arrays (HWC) and tensors (CHW) are taken as the PIL image they hold
    rgb = IMAGES[0]
    array = np.array(rgb)
    assert torch.equal(ours(array), ours(rgb))
    assert torch.equal(ours(torch.from_numpy(array).permute(2, 0, 1)), ours(rgb))


def test_training_transform_unchanged():
    """Training keeps its tensor RandomResizedCrop pipeline, whatever the eval interpolation."""
    from torchvision.transforms import v2

    image = IMAGES[3]
    for cfg in (TransformConfig(32), clip_transform_config(32), TransformConfig(32, interpolation="lanczos")):
        old = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(cfg.img_size, scale=cfg.scale, antialias=True),
                          *([v2.RandomHorizontalFlip()] if cfg.hflip else []), v2.ToDtype(torch.float32, scale=True),
                          v2.Normalize(cfg.mean, cfg.std)])
        torch.manual_seed(5)
        expected = old(image)
        torch.manual_seed(5)
        assert torch.equal(build_transform(cfg, True)(image), expected)


# --------------------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [224, 96, (160, 224)])
@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_open_clip_pixel_exact(size, resize_mode):
    import open_clip

    for interpolation, mean, std, fill in (("bicubic", None, None, 0), ("bilinear", (0.5, 0.4, 0.3), 0.25, 17)):
        reference = open_clip.image_transform(size, is_train=False, mean=mean, std=std, resize_mode=resize_mode,
                                              interpolation=interpolation, fill_color=fill)
        cfg = {"mean": mean, "std": std, "resize_mode": resize_mode, "interpolation": interpolation,
               "fill_color": fill}
        _assert_same(reference, _vitfast(preprocess_from_open_clip(size, cfg)), IMAGES[:6])


@pytest.mark.parametrize("size", [224, 96])
def test_clip_transform_config_is_open_clips_default(size):
    import open_clip

    _assert_same(open_clip.image_transform(size, is_train=False), build_transform(clip_transform_config(size), False))
    assert preprocess_from_open_clip(size) == {"input_size": [3, size, size], "interpolation": "bicubic",
                                               "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                                               "crop_pct": 1.0, "crop_mode": "center"}


def test_open_clip_config_details():
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    # "random" is bicubic at eval; None values and keys open_clip ignores are ignored; the model's size wins
    cfg = {"interpolation": "random", "mean": None, "size": 512, "resize_mode": "squash"}
    assert preprocess_from_open_clip(96, cfg)["interpolation"] == "bicubic"
    assert preprocess_from_open_clip(96, cfg)["input_size"] == [3, 96, 96]
    # a whole PreprocessCfg, as open_clip builds it, through image_transform_v2
    pp = PreprocessCfg(size=96, mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1), interpolation="bilinear",
                       resize_mode="longest", fill_color=255)
    ours = _vitfast(preprocess_from_open_clip(96, asdict(pp)))
    _assert_same(image_transform_v2(pp, is_train=False), ours, IMAGES[:6])
    # a scalar mean/std is repeated, as open_clip does
    reference = open_clip.image_transform(64, is_train=False, mean=0.5, std=0.25)
    _assert_same(reference, _vitfast(preprocess_from_open_clip(64, {"mean": 0.5, "std": 0.25})), IMAGES[:3])


# --------------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------------
# transformers 5 has two backends per processor: ViTImageProcessor / CLIPImageProcessor resize uint8 tensors
# with torchvision (antialiased), which lands within 2 levels of 255 of PIL's resize; the *Pil classes resize
# with PIL and match vitfast bit for bit. Both centre-crop at a floored offset, (size - crop) // 2, where
# torchvision's (and so timm's, open_clip's and vitfast's) CenterCrop rounds half to even: when the resized
# long side exceeds the crop by 3 (mod 4), transformers' crop sits one pixel earlier (see the last test).
# Measured on these images: ViTImageProcessor max |diff| 0.0157 (2/255 / std 0.5, bicubic; 1/255 bilinear),
# CLIPImageProcessor 0.0300 (2/255 / std 0.2613), mean |diff| <= 1.3e-4; the Pil classes 0 (torch.equal).

def _hf_processor(kind: str, backend: str, **kwargs):
    from transformers import CLIPImageProcessor, ViTImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    classes = {("vit", "torchvision"): ViTImageProcessor, ("vit", "pil"): ViTImageProcessorPil,
               ("clip", "torchvision"): CLIPImageProcessor, ("clip", "pil"): CLIPImageProcessorPil}
    return classes[kind, backend](**kwargs)


def _hf_apply(processor):
    return lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0]


# sizes whose crop offsets agree between transformers and torchvision for the CLIP cases below
HF_IMAGES = [_noise(h, w, seed=1) for h, w in [(37, 53), (199, 300), (224, 224), (333, 500), (53, 37), (1, 1)]]
HF_CASES = {
    "vit_default": ("vit", {}),
    "vit_96x128_bicubic": ("vit", {"size": {"height": 96, "width": 128}, "resample": 3}),
    "vit_resize_then_crop": ("vit", {"size": {"height": 256, "width": 256}, "do_center_crop": True,
                                     "crop_size": {"height": 224, "width": 224}}),
    "clip_default": ("clip", {}),
    "clip_256_crop_224": ("clip", {"size": {"shortest_edge": 256}}),
    "clip_336": ("clip", {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}),
}


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_processors(case, backend):
    kind, kwargs = HF_CASES[case]
    processor = _hf_processor(kind, backend, **kwargs)
    preprocess = preprocess_from_hf(json.loads(processor.to_json_string()))
    reference, ours = _hf_apply(processor), _vitfast(preprocess)
    if backend == "pil":
        _assert_same(reference, ours, HF_IMAGES)
        return
    one_level = 1 / 255 / min(preprocess["std"])
    for image in HF_IMAGES:
        expected, got = reference(image), ours(image)
        assert got.shape == expected.shape
        diff = (got - expected).abs()
        assert diff.max().item() <= 2 * one_level + 1e-5, (image.size, diff.max().item() / one_level)
        assert diff.mean().item() <= 3e-4, (image.size, diff.mean().item())


def test_hf_dicts():
    assert preprocess_from_hf(json.loads(_hf_processor("vit", "torchvision").to_json_string())) == {
        "input_size": [3, 224, 224], "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
        "crop_pct": 1.0, "crop_mode": "squash"}
    clip = preprocess_from_hf(json.loads(_hf_processor("clip", "torchvision", size={"shortest_edge": 256})
                                         .to_json_string()))
    assert clip == {"input_size": [3, 224, 224], "interpolation": "bicubic", "mean": list(OPENAI_MEAN),
                    "std": list(OPENAI_STD), "crop_pct": 0.875, "crop_mode": "center"}
    # do_normalize off: scaled to [0, 1] only
    plain = preprocess_from_hf({"image_processor_type": "ViTImageProcessor", "do_normalize": False})
    assert (plain["mean"], plain["std"]) == ([0.0] * 3, [1.0] * 3)


# preprocessor_config.json files as older Hub repos hold them (feature extractors, sizes as bare ints)
LEGACY_HF = {
    "google/vit-base-patch16-224": {
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224},
    "microsoft/swin-tiny-patch4-window7-224": {
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 224},
    "openai/clip-vit-base-patch32": {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(OPENAI_MEAN),
        "image_std": list(OPENAI_STD), "resample": 3, "size": 224},
}


@pytest.mark.parametrize("repo", list(LEGACY_HF))
def test_hf_legacy_configs(repo):
    config = LEGACY_HF[repo]
    kind = "clip" if "CLIP" in config["feature_extractor_type"] else "vit"
    preprocess = preprocess_from_hf(config)
    assert preprocess["input_size"] == [3, 224, 224]
    assert preprocess["crop_mode"] == ("center" if kind == "clip" else "squash")
    assert preprocess["interpolation"] == {2: "bilinear", 3: "bicubic"}[config["resample"]]
    assert preprocess["mean"] == config["image_mean"] and preprocess["crop_pct"] == 1.0
    processor = type(_hf_processor(kind, "pil")).from_dict(
        {k: v for k, v in config.items() if k != "feature_extractor_type"})
    _assert_same(_hf_apply(processor), _vitfast(preprocess), HF_IMAGES[:4])


def test_hf_center_crop_offset_is_floored():
    """A 257×240 image: shortest edge 224 makes it 239 wide, 15 more than the crop; torchvision's CenterCrop
    starts at round(7.5) = 8, transformers' at 7, so vitfast's columns are transformers' shifted by one."""
    processor = _hf_processor("clip", "pil")
    image = _noise(240, 257, seed=2)
    ours = _vitfast(preprocess_from_hf(json.loads(processor.to_json_string())))(image)
    theirs = _hf_apply(processor)(image)
    assert not torch.equal(ours, theirs)
    assert torch.equal(ours[..., :-1], theirs[..., 1:])


def test_hf_crop_pct_survives_timms_floor():
    """crop / shortest_edge as crop_pct can come back one short through floor(crop / crop_pct)."""
    for crop in range(32, 400, 7):
        for short in range(crop, crop + 120):
            config = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": short},
                      "crop_size": {"height": crop, "width": crop}}
            assert math.floor(crop / preprocess_from_hf(config)["crop_pct"]) == short


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------

GOOD = {"input_size": [3, 224, 224], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3,
        "crop_pct": 0.9, "crop_mode": "center"}
BAD = [
    (lambda: eval_transform_config({**GOOD, "interpolation": "bogus"}), "'bogus'"),
    (lambda: eval_transform_config({**GOOD, "interpolation": "random"}), "'random'"),
    (lambda: eval_transform_config({**GOOD, "crop_mode": "zoom"}), "'zoom'"),
    (lambda: eval_transform_config({**GOOD, "resize": 256}), "'resize'"),
    (lambda: eval_transform_config({**GOOD, "input_size": [1, 224, 224]}), "1 channels"),
    (lambda: eval_transform_config({**GOOD, "input_size": 224}), "input_size 224"),
    (lambda: eval_transform_config({**GOOD, "crop_pct": -1}), "crop_pct -1"),
    (lambda: eval_transform_config({**GOOD, "mean": [0.5, 0.5]}), "mean [0.5, 0.5]"),
    (lambda: eval_transform_config({**GOOD, "fill": [0, 0, 0]}), "fill"),
    (lambda: eval_transform_config({k: v for k, v in GOOD.items() if k != "input_size"}), "input_size None"),
    (lambda: TransformConfig(224, interpolation="cubic"), "'cubic'"),
    (lambda: TransformConfig(224, crop_mode="letterbox"), "'letterbox'"),
    (lambda: preprocess_from_timm({"interpolation": "area"}), "'area'"),
    (lambda: preprocess_from_timm({"crop_mode": "random"}), "'random'"),
    (lambda: preprocess_from_open_clip(224, {"resize_mode": "fit"}), "'fit'"),
    (lambda: preprocess_from_open_clip(224, {"interpolation": "lanczos"}), "'lanczos'"),
    (lambda: preprocess_from_hf({"image_processor_type": "ViTImageProcessor", "resample": 9}), "resample 9"),
    (lambda: preprocess_from_hf({"image_processor_type": "ViTImageProcessor", "do_pad": True}), "do_pad"),
    (lambda: preprocess_from_hf({"image_processor_type": "ViTImageProcessor", "do_rescale": False}), "do_rescale"),
    (lambda: preprocess_from_hf({"image_processor_type": "ConvNextImageProcessor", "crop_pct": 0.875,
                                 "size": {"shortest_edge": 224}, "resample": 3, "do_resize": True,
                                 "do_rescale": True}), "crop_pct"),
    (lambda: preprocess_from_hf({"image_processor_type": "CLIPImageProcessor", "do_center_crop": False}),
     "shortest_edge"),
    (lambda: preprocess_from_hf({"image_processor_type": "ViTImageProcessor",
                                 "size": {"shortest_edge": 224, "longest_edge": 448}}), "longest_edge"),
    (lambda: preprocess_from_hf({"image_processor_type": "SomethingImageProcessor", "size": 224,
                                 "resample": 2, "do_resize": True, "do_rescale": True}), "ambiguous"),
    (lambda: preprocess_from_hf({"image_processor_type": "SomethingImageProcessor", "size": 224}), "lacks"),
]


@pytest.mark.parametrize("make,named", BAD, ids=[named for _, named in BAD])
def test_bad_values_raise_one_line_data_error(make, named):
    with pytest.raises(DataError) as info:
        make()
    message = str(info.value)
    assert named in message and "\n" not in message, message
