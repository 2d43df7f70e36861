"""A Hugging Face Hub cache written by hand, in huggingface_hub's own layout, so that vitfast, timm and
open_clip all read the same tiny repos with HF_HUB_OFFLINE=1 and no network:

    CACHE/models--ORG--NAME/blobs/<sha256 of the file>
    CACHE/models--ORG--NAME/refs/<revision>                     (the commit hash)
    CACHE/models--ORG--NAME/snapshots/<commit>/<file> -> ../../blobs/<sha256>

The repos are written by the peers' own savers (timm's ``save_for_hf``, open_clip's ``save_for_hf``,
transformers' ``save_pretrained``), so they hold exactly what the Hub holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch


def add_repo(cache: Path, repo: str, folder: Path, revision: str = "main") -> str:
    """Put every file of `folder` into `cache` as `repo` at `revision`; returns the commit hash."""
    root = cache / f"models--{repo.replace('/', '--')}"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    commit = hashlib.sha1((repo + revision + "".join(p.name for p in files)).encode()).hexdigest()
    for path in files:
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return commit


def timm_vit(tmp: Path, *, classes: int = 5, labels: list[str] | None = None, **args):
    """A tiny timm ViT saved as timm pushes to the Hub (config.json + model.safetensors); (model, folder)."""
    import timm
    from timm.models._hub import save_for_hf

    args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": classes,
            **args}
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()
    _randomize(model)
    folder = tmp / "timm_vit"
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
    if labels is not None:
        config = json.loads((folder / "config.json").read_text())
        config["label_names"] = labels
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return model, folder


def timm_swin(tmp: Path, *, classes: int = 5):
    import timm
    from timm.models._hub import save_for_hf

    args = {"img_size": 32, "patch_size": 2, "embed_dim": 16, "depths": (2, 2), "num_heads": (2, 4),
            "window_size": 4, "num_classes": classes}
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **args).eval()
    _randomize(model)
    folder = tmp / "timm_swin"
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(folder), model_args={**args, "depths": list(args["depths"]),
                                                "num_heads": list(args["num_heads"])}, safe_serialization=True)
    return model, folder


OPEN_CLIP_CFG = {"embed_dim": 32,
                 "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def open_clip_model(tmp: Path, *, quick_gelu: bool = False, safetensors: bool = True):
    """A tiny open_clip CLIP saved as open_clip pushes to the Hub (open_clip_config.json + weights)."""
    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf

    cfg = {**OPEN_CLIP_CFG, **({"quick_gelu": True} if quick_gelu else {})}
    torch.manual_seed(0)
    model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=quick_gelu).eval()
    _randomize(model)
    model.visual.image_mean, model.visual.image_std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    model.visual.preprocess_cfg = {"interpolation": "bicubic", "resize_mode": "shortest"}
    folder = tmp / "open_clip"
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, _NoTokenizer(), cfg, str(folder), safe_serialization=safetensors)
    if not safetensors:
        assert (folder / "open_clip_pytorch_model.bin").is_file()
    return model, folder


class _NoTokenizer:
    """open_clip's saver writes a Hugging Face tokenizer when it has one; CLIP's own BPE has nothing to write."""

    def save_pretrained(self, folder) -> None:
        pass


def hf_vit(tmp: Path, *, classes: int = 5):
    import transformers

    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=classes, layer_norm_eps=1e-12,
                                    id2label={i: f"kind{i}" for i in range(classes)},
                                    label2id={f"kind{i}": i for i in range(classes)})
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    _randomize(model)
    folder = tmp / "hf_vit"
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model, folder


def hf_clip(tmp: Path):
    """A tiny transformers CLIP with its own (small) BPE tokenizer files, as openai/clip-* repos hold them."""
    import transformers

    from vitfast.tokenizer import train_bpe, write_hf_tokenizer

    captions = ["a photo of a red dog", "two cats and one bird", "a blue car on the road"] * 20
    tok = train_bpe(captions, vocab_size=560, context_length=16)
    folder = tmp / "hf_clip"
    folder.mkdir(parents=True)
    write_hf_tokenizer(tok, folder)
    config = transformers.CLIPConfig(
        projection_dim=32,
        vision_config={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128,
                       "image_size": 32, "patch_size": 8},
        text_config={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128,
                     "vocab_size": tok.vocab_size, "max_position_embeddings": 16, "pad_token_id": 0,
                     "bos_token_id": tok.sot_token_id, "eos_token_id": tok.eot_token_id})
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder)
    return (model, tok), folder


def _randomize(model: torch.nn.Module) -> None:
    """Weights unlike their initialization (zero heads, unit norms), so a wrong mapping shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if p.ndim == 1 else 0.0))


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def timm_filled(tmp: Path, name: str = "vit_tiny_patch16_224"):
    """What timm itself leaves in the cache for `create_model(name, pretrained=True)`: model.safetensors
    only, no config.json (timm takes the config from its own table). Real shapes: the named config."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    _randomize(model)
    folder = tmp / "timm_filled"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return model, folder


SIGLIP_TEXTS = ["a small red circle near the top left", "blue vertical stripes on a yellow background",
                "a photo of a dog", "the cat sat on the mat", "A zebra, striped!"]


def siglip_tokenizer_files(folder: Path) -> Path:
    """A small SentencePiece-style (Unigram, Metaspace, ``$A </s>``) tokenizer.json with the tokenizer_config.json
    of the Hub's SigLIP repos (T5Tokenizer, pad and end token ``</s>``), trained here on a few captions."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator([t.lower() for t in SIGLIP_TEXTS] * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "T5Tokenizer", "pad_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>",
              "model_max_length": 16, "extra_ids": 0}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def open_clip_siglip(tmp: Path, repo: str):
    """A tiny open_clip SigLIP (CustomTextCLIP with timm's MAP trunk) saved as open_clip pushes to the Hub, with
    its tokenizer files; its config names `repo` as the tokenizer, as the Hub's SigLIP repos name themselves."""
    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf

    from vitfast.models.peers import siglip_peer
    from vitfast.models.siglip import SigLIPConfig

    vocab = 60
    # 64 wide, one head: the head count a config-less trunk of this width gets (64-wide heads, as timm's)
    config = SigLIPConfig(embed_dim=64, image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=1,
                          context_length=16, vocab_size=vocab, text_width=24, text_heads=4, text_layers=2)
    torch.manual_seed(0)
    model = siglip_peer(config).eval()
    _randomize(model)
    tokenizer_folder = siglip_tokenizer_files(tmp / "tokenizer")
    model_cfg = {"embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
                 "vision_cfg": {"image_size": 32, "timm_model_name": "vit_base_patch16_siglip_224",
                                "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
                 "text_cfg": {"context_length": 16, "vocab_size": vocab, "hf_tokenizer_name": repo,
                              "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 24, "heads": 4, "layers": 2,
                              "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                              "norm_kwargs": {"eps": 1e-6}}}
    model.visual.image_mean, model.visual.image_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    model.visual.preprocess_cfg = {"interpolation": "bicubic", "resize_mode": "squash"}
    folder = tmp / "open_clip_siglip"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = open_clip.tokenizer.HFTokenizer(str(tokenizer_folder), context_length=16, clean="canonicalize")
    save_for_hf(model, tokenizer, model_cfg, str(folder), safe_serialization=True)
    return model, folder
