"""Hugging Face transformers <-> vitfast weight mapping for ViT, Swin (V1), CLIP and SigLIP.

HF state dicts here are in the layout ``save_pretrained`` writes to ``model.safetensors`` (the layout
of checkpoints on the Hub; transformers ≥ 5 renames some modules in memory, e.g. ``q_proj``, but
still saves the original names). Pure functions on dicts and tensors: no files, no downloads.

Layout facts that the mapping relies on (checked against transformers 5.23 by
``tests/convert/test_convert_hf.py``, SigLIP's against 5.25 by ``tests/convert/test_convert_siglip_hf.py``):

- HF keeps q, k and v as separate linears; vitfast (timm / open_clip layout) packs them into one
  ``qkv`` / ``in_proj`` weight in q, k, v order along the output dimension.
- HF Swin puts patch merging at the end of stage i (``layers.{i}.downsample``); vitfast, like recent
  timm, at the start of stage i + 1. Both concatenate the 2×2 neighbours in the same order and use
  the same relative-position bias table layout, so the tensors move unchanged.
- HF CLIP's ``visual_projection`` / ``text_projection`` are bias-free ``nn.Linear`` weights of shape
  (embed_dim, width); open_clip's are parameters of shape (width, embed_dim) used as ``x @ proj``.
- HF SigLIP's attention-pool head is an ``nn.MultiheadAttention`` over the ``probe`` query: its packed
  ``in_proj`` (q, k, v) is timm's ``q`` (the first third, applied to ``latent`` = ``probe``) and ``kv``
  (the rest). HF keeps the position embedding as (N, C) and ``logit_scale`` / ``logit_bias`` as (1,);
  vitfast as (1, N, C) and 0-dim. Both read the text at its last position after the final norm, and
  HF's ``gelu_pytorch_tanh`` is vitfast's ``gelu_approximate="tanh"`` (``gelu``: ``"none"``).
- HF ViT's ``layer_norm_eps`` defaults to 1e-12; the original (JAX) ViT and timm use 1e-6. vitfast's
  ViT takes it as ``norm_eps``, so both convert exactly. Swin and CLIP fix theirs (1e-5, HF's and
  timm's/open_clip's default too); epsilons within ``EPS_TOLERANCE`` of it are accepted: against the
  activation variances of a real network the change is far below fp32 noise in the outputs.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from vitfast.models import build_config, build_model, mlp_ratio_for

EPS_TOLERANCE = 1e-5
"""Largest accepted difference between an HF layer-norm epsilon and vitfast's fixed one."""

_SWIN_EPS, _CLIP_EPS = 1e-5, 1e-5  # vitfast's fixed LayerNorm epsilons (its ViT's is config.norm_eps)

# HF keys that carry nothing vitfast needs, with why dropping them is safe.
_IGNORED_HF_KEYS = (
    # Derived buffers that older transformers versions saved; vitfast recomputes them.
    re.compile(r".*\.position_ids$"),
    re.compile(r".*\.relative_position_index$"),
    # ViTModel's tanh pooler (add_pooling_layer=True) is not part of ViT's classifier path, which
    # reads the normalized class token; last_hidden_state is unaffected by dropping it.
    re.compile(r"^pooler\.dense\.(weight|bias)$"),
)


# How a rule makes its vitfast tensor from the HF tensor(s), and the HF tensors back from it: "copy";
# "qkv", q, k and v concatenated along the output dimension (split into clones: safetensors refuses
# tensors that share storage); "t", transposed; "lead", a leading dimension of 1 added (HF's (N, C)
# position embedding and (1,) logit scale / bias are vitfast's (1, N, C) and 0-dim: "drop" for those).
_OPS = {
    "copy": (lambda hf: hf[0], lambda vf: [vf]),
    "qkv": (lambda hf: torch.cat(hf, dim=0), lambda vf: [part.clone() for part in vf.chunk(3, dim=0)]),
    "t": (lambda hf: hf[0].t().contiguous(), lambda vf: [vf.t().contiguous()]),
    "lead": (lambda hf: hf[0].unsqueeze(0), lambda vf: [vf.squeeze(0)]),
    "drop": (lambda hf: hf[0].squeeze(0), lambda vf: [vf.unsqueeze(0)]),
}
_TRANSPOSED = {"visual.proj", "text_projection"}  # open_clip's (width, embed_dim) projections

# A transformer block's modules in rule order: vitfast's name (timm's; open_clip's for CLIP) and HF's.
# Three HF names are q, k and v, which vitfast packs into one tensor; "{a}" is HF's attention module
# ("attention" in ViT, "self" in Swin).
_TIMM_BLOCK = [
    ("norm1.", "layernorm_before."),
    ("attn.qkv.", ("attention.{a}.query.", "attention.{a}.key.", "attention.{a}.value.")),
    ("attn.relative_position_bias_table", "attention.{a}.relative_position_bias_table"),  # Swin only
    ("attn.proj.", "attention.output.dense."), ("norm2.", "layernorm_after."),
    ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense."),
]
_CLIP_BLOCK = [
    ("ln_1.", "layer_norm1."), ("attn.in_proj_", ("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")),
    ("attn.out_proj.", "self_attn.out_proj."), ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."),
]
_SIGLIP_VISION_BLOCK = [  # timm's block names (vitfast's SigLIP image trunk), HF's CLIP-style encoder layer
    ("norm1.", "layer_norm1."), ("attn.qkv.", ("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")),
    ("attn.proj.", "self_attn.out_proj."), ("norm2.", "layer_norm2."),
    ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
]

# HF tensors that hold several vitfast tensors end to end along dim 0: family -> (the config field that is
# the unit of the parts' sizes, {HF key: its parts' names and sizes in that unit, the last taking the rest}).
# The name tables refer to a part as "key[part]": cut out before the rules run on import, joined back after
# them on export. SigLIP's pooling head packs q, k, v in nn.MultiheadAttention's in_proj; timm's attention
# pool calls the first third (applied to the probe) q and the rest kv.
_PACKED = {"siglip": ("vision_width", {f"vision_model.head.attention.in_proj_{p}": (("q", 1), ("kv", 2))
                                       for p in ("weight", "bias")})}


def _under(b: str, h: str, table: list, a: str = "") -> list:
    """`table`'s names under the block prefixes `b` (vitfast) and `h` (HF)."""
    return [(b + vf, tuple(h + name.format(a=a) for name in ((hf,) if isinstance(hf, str) else hf)))
            for vf, hf in table]


def _vit_names(cfg, p: str) -> list:
    """ViT's names; `p` is the HF prefix: "vit." in ViTForImageClassification, "" in ViTModel."""
    names = [("cls_token", f"{p}embeddings.cls_token"), ("pos_embed", f"{p}embeddings.position_embeddings"),
             ("patch_embed.proj.", f"{p}embeddings.patch_embeddings.projection."), ("norm.", f"{p}layernorm.")]
    for i in range(cfg.depth):
        names += _under(f"blocks.{i}.", f"{p}encoder.layer.{i}.", _TIMM_BLOCK, "attention")
    return names + [("head.", "classifier.")]


def _swin_names(cfg, p: str) -> list:
    """Swin V1's names; `p` is "swin." in SwinForImageClassification, "" in SwinModel."""
    names = [("patch_embed.proj.", f"{p}embeddings.patch_embeddings.projection."),
             ("patch_embed.norm.", f"{p}embeddings.norm."), ("norm.", f"{p}layernorm.")]
    for s, depth in enumerate(cfg.depths):
        for i in range(depth):
            names += _under(f"layers.{s}.blocks.{i}.", f"{p}encoder.layers.{s}.blocks.{i}.", _TIMM_BLOCK, "self")
        if s > 0:  # HF merges at the end of the previous stage, vitfast at the start of this one
            names.append((f"layers.{s}.downsample.", f"{p}encoder.layers.{s - 1}.downsample."))
    return names + [("head.fc.", "classifier.")]


def _clip_names(cfg, p: str) -> list:
    def tower(vf: str, hf: str, layers: int) -> list:
        return [n for i in range(layers) for n in _under(f"{vf}.resblocks.{i}.", f"{hf}.encoder.layers.{i}.",
                                                          _CLIP_BLOCK)]

    return [
        ("visual.conv1.", "vision_model.embeddings.patch_embedding."),
        ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
        ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
        ("visual.ln_pre.", "vision_model.pre_layrnorm."),  # sic: HF's spelling
        *tower("visual.transformer", "vision_model", cfg.vision_layers),
        ("visual.ln_post.", "vision_model.post_layernorm."),
        ("visual.proj", "visual_projection.weight"),
        ("token_embedding.", "text_model.embeddings.token_embedding."),
        ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
        *tower("transformer", "text_model", cfg.text_layers),
        ("ln_final.", "text_model.final_layer_norm."),
        ("text_projection", "text_projection.weight"),
        ("logit_scale", "logit_scale"),
    ]


def _siglip_names(cfg, p: str) -> list:
    def tower(vf: str, hf: str, layers: int, table: list) -> list:
        return [n for i in range(layers) for n in _under(f"{vf}.{i}.", f"{hf}.encoder.layers.{i}.", table)]

    head, pool = "vision_model.head.", "visual.trunk.attn_pool."
    in_proj = f"{head}attention.in_proj_"
    return [
        ("visual.trunk.patch_embed.proj.", "vision_model.embeddings.patch_embedding."),
        ("visual.trunk.pos_embed", "vision_model.embeddings.position_embedding.weight", "lead"),
        *tower("visual.trunk.blocks", "vision_model", cfg.vision_layers, _SIGLIP_VISION_BLOCK),
        ("visual.trunk.norm.", "vision_model.post_layernorm."),
        (f"{pool}latent", f"{head}probe"),
        *[(f"{pool}{part}.{p}", f"{in_proj}{p}[{part}]") for part in ("q", "kv") for p in ("weight", "bias")],
        (f"{pool}proj.", f"{head}attention.out_proj."), (f"{pool}norm.", f"{head}layernorm."),
        (f"{pool}mlp.", f"{head}mlp."),
        ("text.token_embedding.", "text_model.embeddings.token_embedding."),
        ("text.positional_embedding", "text_model.embeddings.position_embedding.weight"),
        *tower("text.transformer.resblocks", "text_model", cfg.text_layers, _CLIP_BLOCK),
        ("text.ln_final.", "text_model.final_layer_norm."),
        ("text.text_projection.", "text_model.head."),
        ("logit_scale", "logit_scale", "drop"), ("logit_bias", "logit_bias", "drop"),
    ]


# family -> (config, HF prefix) -> names; the prefix is "vit." / "swin." in HF's classifiers, "" elsewhere.
# A name is (vitfast, HF) or (vitfast, HF, op) for an ``_OPS`` entry that the defaults below do not pick.
_NAMES = {"vit": _vit_names, "swin": _swin_names, "clip": _clip_names, "siglip": _siglip_names}
_CLASSIFIERS = ("vit", "swin")  # the families whose HF classifiers keep the backbone under "<family>."


def _rules(family: str, config, prefix: str) -> list[tuple[str, torch.Size, tuple[str, ...], str]]:
    """(vitfast key, its shape, the HF key(s) it is made from, the ``_OPS`` entry that moves them) for each
    tensor of the vitfast model, in the name tables' order. A name ending in "." or "_" is a prefix (a
    module's weight and bias); any other names one tensor."""
    # Built once on CPU: the model is the single source of truth for shapes (a few seconds for ViT-H).
    expected = {k: v.shape for k, v in build_model(family, config).state_dict().items()}
    rules = []
    for vf, hf, *named_op in _NAMES[family](config, prefix):
        hf = (hf,) if isinstance(hf, str) else hf
        for key, shape in expected.items():
            if key == vf or (vf.endswith((".", "_")) and key.startswith(vf)):
                op = named_op[0] if named_op else "t" if key in _TRANSPOSED else "qkv" if len(hf) == 3 else "copy"
                rules.append((key, shape, tuple(name + key[len(vf):] for name in hf), op))
    return rules


def _unpack(family: str, config, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state` with each ``_PACKED`` tensor cut into its parts, named "key[part]" (clones: no shared storage).
    The last part takes all the remaining rows, so a tensor of the wrong length gives a mis-shaped part."""
    if family not in _PACKED:
        return state
    field, packed = _PACKED[family]
    unit, state = getattr(config, field), dict(state)
    for key, parts in packed.items():
        if key in state and state[key].dim() > 0:
            tensor, start = state.pop(key), 0
            for i, (part, size) in enumerate(parts):
                stop = start + size * unit if i < len(parts) - 1 else tensor.shape[0]
                state[f"{key}[{part}]"] = tensor[start:stop].clone()
                start = stop
    return state


def _pack(family: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state` with the parts of each ``_PACKED`` tensor joined back into it, in order."""
    for key, parts in _PACKED.get(family, (None, {}))[1].items():
        if all(f"{key}[{part}]" in state for part, _ in parts):
            state[key] = torch.cat([state.pop(f"{key}[{part}]") for part, _ in parts], dim=0)
    return state


def _fail_on_problems(what: str, missing: list[str], unexpected: list[str], misshaped: list[str], fix: str) -> None:
    """One ValueError listing every key problem, so a bad checkpoint is diagnosed in one run."""
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f", … ({len(keys) - 20} more)" if len(keys) > 20 else ""
            parts.append(f"{label} {len(keys)}: {', '.join(keys[:20])}{more}")
    if parts:
        raise ValueError(f"{what} does not match its config; " + "; ".join(parts) + f". {fix}")


# --------------------------------------------------------------------------------------------- import


def _check_eps(eps: float, fixed: float, field: str) -> None:
    if abs(eps - fixed) > EPS_TOLERANCE:
        raise ValueError(f"{field} is {eps}, but vitfast's layer norms use eps={fixed} and the outputs would "
                         "differ; this checkpoint cannot be converted exactly.")


def _check_act(act: str, allowed: tuple[str, ...], field: str) -> None:
    if act not in allowed:
        raise ValueError(f"{field} is {act!r}; vitfast supports {', '.join(map(repr, allowed))} here.")


def _square(value, field: str) -> int:
    """HF sizes may be an int or an (h, w) pair; vitfast models are square."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{field} is {value}; vitfast supports square sizes only.")
        return int(value[0])
    return int(value)


def _mlp_ratio(hidden: int, intermediate: int, field: str) -> float:
    ratio = mlp_ratio_for(hidden, intermediate)
    if int(hidden * ratio) != intermediate:  # vitfast sizes the MLP as int(dim * mlp_ratio)
        raise ValueError(f"{field} {intermediate} is not reachable as int({hidden} * mlp_ratio).")
    return ratio


def _image_fields(hf: dict, state: dict[str, Tensor], patch_size: int) -> dict:
    """The fields HF's ViT and Swin configs share; the classes come from the classifier (0 without one)."""
    classifier = state.get("classifier.weight")
    return {"img_size": _square(hf.get("image_size", 224), "image_size"),
            "patch_size": _square(hf.get("patch_size", patch_size), "patch_size"),
            "in_chans": hf.get("num_channels", 3), "qkv_bias": hf.get("qkv_bias", True),
            "num_classes": classifier.shape[0] if classifier is not None else 0}


def _vit_config(hf: dict, state: dict[str, Tensor]) -> dict:
    _check_act(hf.get("hidden_act", "gelu"), ("gelu",), "hidden_act")
    dim = hf.get("hidden_size", 768)
    return _image_fields(hf, state, 16) | {
        "embed_dim": dim, "depth": hf.get("num_hidden_layers", 12), "num_heads": hf.get("num_attention_heads", 12),
        "mlp_ratio": _mlp_ratio(dim, hf.get("intermediate_size", 3072), "intermediate_size"),
        "norm_eps": hf.get("layer_norm_eps", 1e-12),  # HF's default; timm's ViTs use 1e-6
    }


def _swin_config(hf: dict, state: dict[str, Tensor]) -> dict:
    _check_act(hf.get("hidden_act", "gelu"), ("gelu",), "hidden_act")
    _check_eps(hf.get("layer_norm_eps", 1e-5), _SWIN_EPS, "layer_norm_eps")
    if hf.get("use_absolute_embeddings", False):
        raise ValueError("use_absolute_embeddings=True (an absolute position embedding) is not part of "
                         "vitfast's Swin; only relative position bias models convert.")
    return _image_fields(hf, state, 4) | {
        "embed_dim": hf.get("embed_dim", 96), "depths": tuple(hf.get("depths", (2, 2, 6, 2))),
        "num_heads": tuple(hf.get("num_heads", (3, 6, 12, 24))),
        "window_size": _square(hf.get("window_size", 7), "window_size"), "mlp_ratio": hf.get("mlp_ratio", 4.0),
    }


def _clip_config(hf: dict, state: dict[str, Tensor]) -> dict:
    vision, text = hf.get("vision_config") or {}, hf.get("text_config") or {}
    acts = {vision.get("hidden_act", "quick_gelu"), text.get("hidden_act", "quick_gelu")}
    if len(acts) != 1:
        raise ValueError(f"the towers use different activations {sorted(acts)}; vitfast's CLIP uses one for both.")
    act = acts.pop()
    _check_act(act, ("quick_gelu", "gelu"), "hidden_act")
    for name, tower in (("vision", vision), ("text", text)):
        _check_eps(tower.get("layer_norm_eps", 1e-5), _CLIP_EPS, f"{name}_config.layer_norm_eps")
    vw, tw, vocab = vision.get("hidden_size", 768), text.get("hidden_size", 512), text.get("vocab_size", 49408)
    eos = text.get("eos_token_id", 2)
    return {
        "embed_dim": hf.get("projection_dim", 512),
        "image_size": _square(vision.get("image_size", 224), "vision_config.image_size"),
        "patch_size": _square(vision.get("patch_size", 32), "vision_config.patch_size"),
        "in_chans": vision.get("num_channels", 3), "vision_width": vw,
        "vision_layers": vision.get("num_hidden_layers", 12), "vision_heads": vision.get("num_attention_heads", 12),
        "vision_mlp_ratio": _mlp_ratio(vw, vision.get("intermediate_size", 3072), "vision_config.intermediate_size"),
        "context_length": text.get("max_position_embeddings", 77), "vocab_size": vocab, "text_width": tw,
        "text_heads": text.get("num_attention_heads", 8), "text_layers": text.get("num_hidden_layers", 12),
        "text_mlp_ratio": _mlp_ratio(tw, text.get("intermediate_size", 2048), "text_config.intermediate_size"),
        # HF reads eos_token_id == 2 as the legacy rule "pool at argmax(input_ids)"; with CLIP's tokenizer the
        # end-of-text token is the largest id, so that is the first vocab_size - 1 (vitfast's rule).
        "eot_token_id": vocab - 1 if eos == 2 else eos, "quick_gelu": act == "quick_gelu",
    }


_SIGLIP_ACTS = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}  # HF's hidden_act -> vitfast's gelu_approximate


def _siglip_config(hf: dict, state: dict[str, Tensor]) -> dict:
    vision, text = hf.get("vision_config") or {}, hf.get("text_config") or {}
    if not vision.get("vision_use_head", True):
        raise ValueError("vision_config.vision_use_head is False, so the checkpoint has no attention-pool head, "
                         "which vitfast's SigLIP needs for its image embedding; convert a checkpoint with the head.")
    acts = {tower.get("hidden_act", "gelu_pytorch_tanh") for tower in (vision, text)}
    if len(acts) != 1:
        raise ValueError(f"the towers use different activations {sorted(acts)}; vitfast's SigLIP uses one for "
                         "both (its gelu_approximate), so this checkpoint cannot be converted exactly.")
    act = acts.pop()
    _check_act(act, tuple(_SIGLIP_ACTS), "hidden_act")
    eps = {float(tower.get("layer_norm_eps", 1e-6)) for tower in (vision, text)}
    if len(eps) != 1:
        raise ValueError(f"the towers use different layer_norm_eps {sorted(eps)}; vitfast's SigLIP uses one "
                         "norm_eps for both, so this checkpoint cannot be converted exactly.")
    vw, tw = vision.get("hidden_size", 768), text.get("hidden_size", 768)
    projection = text.get("projection_size") or tw  # HF's default (and older configs, which lack the field)
    if projection != vw:
        raise ValueError(f"text_config.projection_size {projection} differs from vision_config.hidden_size {vw}; "
                         "vitfast's SigLIP projects the text into the image trunk's width (embed_dim), so they "
                         "must be equal.")
    return {
        "embed_dim": vw,
        "image_size": _square(vision.get("image_size", 224), "vision_config.image_size"),
        "patch_size": _square(vision.get("patch_size", 16), "vision_config.patch_size"),
        "in_chans": vision.get("num_channels", 3), "vision_width": vw,
        "vision_layers": vision.get("num_hidden_layers", 12), "vision_heads": vision.get("num_attention_heads", 12),
        "vision_mlp_ratio": _mlp_ratio(vw, vision.get("intermediate_size", 3072), "vision_config.intermediate_size"),
        "context_length": text.get("max_position_embeddings", 64), "vocab_size": text.get("vocab_size", 32000),
        "text_width": tw, "text_heads": text.get("num_attention_heads", 12),
        "text_layers": text.get("num_hidden_layers", 12),
        "text_mlp_ratio": _mlp_ratio(tw, text.get("intermediate_size", 3072), "text_config.intermediate_size"),
        "norm_eps": eps.pop(), "gelu_approximate": _SIGLIP_ACTS[act],
    }


_READERS = {"vit": _vit_config, "swin": _swin_config, "clip": _clip_config, "siglip": _siglip_config}


def hf_to_vitfast(hf_config: dict, state: dict[str, Tensor]) -> tuple[str, object, dict[str, Tensor]]:
    """Convert a transformers checkpoint to vitfast: (family, config, state dict for strict loading).

    `hf_config` is the checkpoint's config.json as a dict (model_type "vit", "swin", "clip" or "siglip");
    `state` its weights as ``save_pretrained`` writes them, for ViTModel / ViTForImageClassification,
    SwinModel / SwinForImageClassification, CLIPModel or SiglipModel. The number of classes comes from the
    classifier weight (0 without one). ViTModel's pooler and derived buffers (``position_ids``,
    ``relative_position_index``) are dropped. Raises ValueError naming any feature vitfast cannot
    represent, or listing every missing, unexpected and mis-shaped key at once.
    """
    family = hf_config.get("model_type")
    if family not in _READERS:
        raise ValueError(f"model_type {family!r} is not supported; vitfast converts 'vit', 'swin' (V1, not "
                         "'swinv2'), 'clip' and 'siglip' (SiglipModel, not 'siglip2') checkpoints.")
    config = build_config(family, _READERS[family](hf_config, state))
    # the classifiers keep the backbone under "vit." / "swin.", the bare models at the top
    prefix = f"{family}." if family in _CLASSIFIERS and any(k.startswith(f"{family}.") for k in state) else ""
    state = _unpack(family, config, state)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing, misshaped = [], []
    for vf, shape, hf, op in _rules(family, config, prefix):
        absent = [k for k in hf if k not in state]
        missing += absent
        used.update(hf)
        if absent:
            continue
        # The HF shapes the vitfast shape implies, found by running the export direction on a meta tensor.
        want = [t.shape for t in _OPS[op][1](torch.empty(shape, device="meta"))]
        bad = [f"{k} {tuple(state[k].shape)} (expected {tuple(w)})" for k, w in zip(hf, want) if state[k].shape != w]
        misshaped += bad
        if not bad:
            out[vf] = _OPS[op][0]([state[k] for k in hf])
    unexpected = [k for k in state if k not in used and not any(p.match(k) for p in _IGNORED_HF_KEYS)]
    _fail_on_problems(f"the {family} state dict", missing, sorted(unexpected), misshaped,
                      "Pass the weights saved with this config.json by save_pretrained (model.safetensors).")
    return family, config, out


# --------------------------------------------------------------------------------------------- export


def _vit_hf_config(cfg) -> dict:
    if not cfg.class_token or cfg.global_pool != "token":
        raise ValueError(f"HF's ViT pools the class token; this model uses class_token={cfg.class_token}, "
                         f"global_pool={cfg.global_pool!r}, which transformers' ViT cannot represent.")
    return {
        "model_type": "vit", "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads, "intermediate_size": int(cfg.embed_dim * cfg.mlp_ratio),
        "hidden_act": "gelu", "layer_norm_eps": cfg.norm_eps, "image_size": cfg.img_size, "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans, "qkv_bias": cfg.qkv_bias,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    } | _head_fields(cfg.num_classes, "ViTForImageClassification", "ViTModel")


def _swin_hf_config(cfg) -> dict:
    return {
        "model_type": "swin", "image_size": cfg.img_size, "patch_size": cfg.patch_size, "num_channels": cfg.in_chans,
        "embed_dim": cfg.embed_dim, "depths": list(cfg.depths), "num_heads": list(cfg.num_heads),
        "window_size": cfg.window_size, "mlp_ratio": cfg.mlp_ratio, "qkv_bias": cfg.qkv_bias, "hidden_act": "gelu",
        "layer_norm_eps": _SWIN_EPS, "use_absolute_embeddings": False, "drop_path_rate": cfg.drop_path_rate,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    } | _head_fields(cfg.num_classes, "SwinForImageClassification", "SwinModel")


def _head_fields(num_classes: int, with_head: str, without: str) -> dict:
    if num_classes <= 0:
        return {"architectures": [without]}
    return {"architectures": [with_head], "id2label": {str(i): f"LABEL_{i}" for i in range(num_classes)},
            "label2id": {f"LABEL_{i}": i for i in range(num_classes)}}


def _clip_hf_config(cfg) -> dict:
    if cfg.eot_token_id == 2:
        raise ValueError("eot_token_id 2 cannot be exported: transformers reads eos_token_id 2 as the legacy "
                         "'pool at argmax(input_ids)' rule, which differs from vitfast's first-EOT pooling.")
    act = "quick_gelu" if cfg.quick_gelu else "gelu"
    vision = {
        "hidden_size": cfg.vision_width, "num_hidden_layers": cfg.vision_layers,
        "num_attention_heads": cfg.vision_heads,
        "intermediate_size": int(cfg.vision_width * cfg.vision_mlp_ratio), "image_size": cfg.image_size,
        "patch_size": cfg.patch_size, "num_channels": cfg.in_chans, "hidden_act": act, "layer_norm_eps": _CLIP_EPS,
        "projection_dim": cfg.embed_dim,
    }
    text = {
        "hidden_size": cfg.text_width, "num_hidden_layers": cfg.text_layers, "num_attention_heads": cfg.text_heads,
        "intermediate_size": int(cfg.text_width * cfg.text_mlp_ratio), "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context_length, "eos_token_id": cfg.eot_token_id, "hidden_act": act,
        "layer_norm_eps": _CLIP_EPS, "projection_dim": cfg.embed_dim,
        # vitfast has no begin/pad tokens of its own; HF's defaults (49406, 1) may lie outside a small vocabulary.
        "bos_token_id": None, "pad_token_id": None,
    }
    return {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": cfg.embed_dim,
            "logit_scale_init_value": cfg.init_logit_scale, "vision_config": vision, "text_config": text}


def _siglip_hf_config(cfg) -> dict:
    act = {approximate: name for name, approximate in _SIGLIP_ACTS.items()}[cfg.gelu_approximate]
    common = {"hidden_act": act, "layer_norm_eps": cfg.norm_eps, "attention_dropout": 0.0}
    vision = {
        "hidden_size": cfg.vision_width, "num_hidden_layers": cfg.vision_layers,
        "num_attention_heads": cfg.vision_heads, "intermediate_size": int(cfg.vision_width * cfg.vision_mlp_ratio),
        "image_size": cfg.image_size, "patch_size": cfg.patch_size, "num_channels": cfg.in_chans,
        "vision_use_head": True,
    } | common
    text = {
        "hidden_size": cfg.text_width, "num_hidden_layers": cfg.text_layers, "num_attention_heads": cfg.text_heads,
        "intermediate_size": int(cfg.text_width * cfg.text_mlp_ratio), "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context_length, "projection_size": cfg.embed_dim,
        # The model reads no special token (it pools the last position); HF's defaults (pad 1, bos 49406,
        # eos 49407) may lie outside a small vocabulary. export() fills pad and eos from a tokenizer.
        "pad_token_id": None, "bos_token_id": None, "eos_token_id": None,
    } | common
    return {"model_type": "siglip", "architectures": ["SiglipModel"], "vision_config": vision, "text_config": text}


_WRITERS = {"vit": _vit_hf_config, "swin": _swin_hf_config, "clip": _clip_hf_config, "siglip": _siglip_hf_config}


def vitfast_to_hf(family: str, config, state: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """Convert a vitfast model to transformers: (config.json dict, state dict as ``save_pretrained`` writes it).

    The class is named in the config's ``architectures``: ViTForImageClassification /
    SwinForImageClassification when the model has a head (num_classes > 0), else ViTModel / SwinModel;
    CLIPModel for CLIP, SiglipModel for SigLIP. Load a headless ViT with
    ``ViTModel.from_pretrained(path, add_pooling_layer=False)``: vitfast has no pooler to export.
    ``AutoConfig.for_model(**config)`` accepts the dict. Raises ValueError for features transformers
    cannot represent (ViT without class-token pooling) or, listing all at once, for missing, unexpected
    or mis-shaped vitfast keys.
    """
    if family not in _WRITERS:
        raise ValueError(f"unknown model family {family!r}; vitfast exports 'vit', 'swin', 'clip' and 'siglip'.")
    hf_config = _WRITERS[family](config)
    prefix = f"{family}." if family in _CLASSIFIERS and config.num_classes > 0 else ""
    out: dict[str, Tensor] = {}
    missing, misshaped = [], []
    rules = _rules(family, config, prefix)
    for vf, shape, hf, op in rules:
        if vf not in state:
            missing.append(vf)
        elif state[vf].shape != shape:
            misshaped.append(f"{vf} {tuple(state[vf].shape)} (expected {tuple(shape)})")
        else:
            out.update(zip(hf, _OPS[op][1](state[vf])))
    unexpected = sorted(set(state) - {rule[0] for rule in rules})
    _fail_on_problems(f"the vitfast {family} state dict", missing, unexpected, misshaped,
                      "Pass model.state_dict() of the model built from this config.")
    return hf_config, _pack(family, out)
