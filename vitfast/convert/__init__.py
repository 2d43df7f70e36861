"""Other projects' weights into vitfast model folders, and back out: timm ViT and Swin checkpoints,
OpenAI CLIP and open_clip checkpoints (.safetensors, .pth, .bin, .pth.tar, TorchScript), and Hugging
Face transformers folders (ViT, Swin, CLIP); export to timm and Hugging Face.

What lives where, each module importing only from those above it in this list:

- ``infer``: checkpoint files and HF folders into state dicts, running nothing they carry; their layout,
  and the vitfast family and config their shapes fix; ``ConvertError``.
- ``hf``: the transformers <-> vitfast key table, both directions (pure functions on dicts).
- ``write``: the model built strictly from the weights, and folders staged and renamed into place.
- ``repos``: a Hub repo (through ``vitfast.hub``) or local folder in timm's, open_clip's or transformers'
  layout read into a family, config, state dict, preprocessing and class names; timm's ``name.tag`` and
  open_clip's model + tag resolved to their repos (``resolve``).
- ``from_vitfast``: :func:`export`, a vitfast folder to timm or HF.
- ``to_vitfast``: :func:`convert`, a checkpoint, HF folder or ``hf-hub:`` repo to a vitfast folder, checked
  against timm, open_clip or transformers on a random input (``to=`` exports).
"""

from vitfast.convert.from_vitfast import export
from vitfast.convert.hf import hf_to_vitfast, vitfast_to_hf
from vitfast.convert.infer import ConvertError
from vitfast.convert.to_vitfast import convert

__all__ = ["ConvertError", "convert", "export", "hf_to_vitfast", "vitfast_to_hf"]
