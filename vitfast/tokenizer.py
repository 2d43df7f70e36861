"""CLIP's byte-level BPE tokenizer on the `tokenizers` library, saved as one ``tokenizer.json``.

The pipeline gives the same ids as open_clip's ``SimpleTokenizer``:

1. Python cleaning, as CLIP's: ``ftfy.fix_text``, HTML unescaping (twice), whitespace collapsed,
   lower case. The library's normalizers cannot express ftfy or HTML entities, and its Lowercase
   has no final-sigma rule (``"ΟΔΟΣ"`` must give ``"οδος"``), so this part stays in Python.
2. The ``tokenizer.json`` itself: whitespace and lower-case normalizer (a no-op on cleaned text),
   CLIP's split regex, the byte-level alphabet, BPE with the end-of-word suffix ``</w>``,
   ``<|startoftext|>`` + text + ``<|endoftext|>``, and truncation and zero padding to the context
   length, which is how the file records that length. Any `tokenizers` client loading the file gets
   the same ids for text that needs none of step 1 and spells no special token.

Vocabulary layout, for CLIP's merges and for a BPE trained here alike: the 256 byte symbols, the same
256 with ``</w>``, one token per merge, then the start and end tokens (the last two ids). Padding is
id 0 as in open_clip, which is the byte symbol ``!``: the text tower pools at the first end token,
so the pad id only has to differ from the end token's, and the end token, being last, never is 0.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import os
import string
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from vitfast.files import atomic_write

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
EOW = "</w>"
TOKENIZER_NAME = "tokenizer.json"
DEFAULT_CONTEXT_LENGTH = 77
CLIP_MERGES_NAME = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the file's first 49152 - 256 - 2 = 48894 merges: with the 2 x 256 byte symbols and the
# two special tokens, 49408 ids.
_CLIP_NUM_MERGES = 49152 - 256 - 2
_MERGES_FIX = (f"pass the path of {CLIP_MERGES_NAME} (--bpe-path, or merges_path=), or "
               f"`pip install open_clip_torch`, which ships it.")
_NUM_BYTE_SYMBOLS = 2 * 256
# CLIP's split, less its special-token alternatives (the library matches added tokens itself). CLIP
# matches case-insensitively, which on lower-cased text changes one thing: "'s" also matches "'ſ"
# (long s, U+017F), hence the class below.
_SPLIT_PATTERN = r"""'[sſ]|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class TokenizerError(ValueError):
    """A tokenizer or merges file that cannot be used: the message names the file and the fix."""


def _clean(text: str) -> str:
    """CLIP's text cleaning: fix mojibake and odd Unicode, unescape HTML, collapse spaces, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _byte_symbols() -> list[str]:
    """The first 512 tokens of every vocabulary here: the 256 byte symbols, then the same with ``</w>``."""
    # Sorted by code point, the library's byte-level alphabet is in CLIP's bytes_to_unicode order:
    # printable bytes stand for themselves (< 256), the others map to 256 + n in byte order.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return alphabet + [a + EOW for a in alphabet]


def _pipeline(model: models.BPE) -> Tokenizer:
    """A tokenizer around `model` with CLIP's normalizer, pre-tokenizer and decoder."""
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
        normalizers.Lowercase(),
        # CLIP's case-insensitive split regex matches U+0345 with neither its letter class nor its
        # symbol class, so to CLIP the character is a word break that leaves no token, like a space.
        normalizers.Replace("\u0345", " "),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        # invert + removed: the regex matches are the words and what lies between them (spaces) goes.
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace(EOW, " ")])
    return tokenizer


def _configure(tokenizer: Tokenizer, context_length: int) -> None:
    """Set how `tokenizer` encodes: rows of `context_length` ids, special tokens only where added."""
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"context_length must be an integer of at least 2 (room for the start and end "
                         f"tokens), got {context_length!r}.")
    # The library truncates the text to context_length - 2 before adding the start and end tokens,
    # which is open_clip's rule: keep the first tokens and end on <|endoftext|>.
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.enable_padding(length=context_length, pad_id=ClipTokenizer.pad_token_id,
                             pad_token=tokenizer.id_to_token(ClipTokenizer.pad_token_id))
    # A text spelling "<|endoftext|>" stays text: an end token inside a caption would move where the
    # text tower pools. open_clip, whose special tokens are spelled <end_of_text>, also reads it as text.
    # (The library does not save this flag, so every tokenizer gets it here.)
    tokenizer.encode_special_tokens = True


def _text_list(texts: str | Sequence[str]) -> list[str]:
    """`texts` as a list of strings (one for a str); TypeError naming the first item that is not one."""
    if isinstance(texts, str):
        return [texts]
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str; pass a string or a "
                            f"sequence of strings.")
    return list(texts)


def _id_row(ids: Sequence[int] | torch.Tensor) -> list[int]:
    """One row of ids as a list; TypeError for anything else (a batch, floats)."""
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    if any(not isinstance(i, int) for i in ids):
        raise TypeError("decode takes one row of integer ids; decode a batch row by row.")
    return ids


class ClipTokenizer:
    """Texts to CLIP token ids: ``[<|startoftext|>] + BPE ids + [<|endoftext|>]``, zero padded.

    Attributes: ``context_length`` (the row length `__call__` returns by default), ``sot_token_id``,
    ``eot_token_id``, ``pad_token_id`` (0) and ``vocab_size``.
    """

    pad_token_id = 0

    def __init__(self, tokenizer: Tokenizer, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        """Wrap `tokenizer` (built by this module; it is set to truncate and pad to `context_length`)."""
        self.sot_token_id, self.eot_token_id = tokenizer.token_to_id(SOT), tokenizer.token_to_id(EOT)
        if None in (self.sot_token_id, self.eot_token_id):
            raise TokenizerError(f"the tokenizer has no {SOT} / {EOT} tokens; build it with "
                                 f"clip_bpe_tokenizer() or train_bpe().")
        _configure(tokenizer, context_length)
        self._tokenizer = tokenizer
        self._by_length = {context_length: tokenizer}  # others are configured copies, made when first asked for
        self.context_length = context_length
        self.vocab_size = tokenizer.get_vocab_size()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids of `texts` as a (len(texts), context_length) int64 tensor (one row for a str).

        Texts longer than the context are cut to their first tokens and still end in the end token.
        """
        texts = _text_list(texts)
        length = self.context_length if context_length is None else context_length
        if length not in self._by_length:
            copy = Tokenizer.from_str(self._tokenizer.to_str())
            _configure(copy, length)
            self._by_length[length] = copy
        tokenizer = self._by_length[length]
        # One text at a time: encode_batch was no faster on captions (measured on 2 cores), and it
        # would start a thread pool in every DataLoader worker that tokenizes.
        rows = [tokenizer.encode(_clean(text)).ids for text in texts]
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), length)

    def __getstate__(self) -> dict:
        # The library pickles a tokenizer as its JSON, which leaves out encode_special_tokens; going
        # through __init__ again keeps DataLoader workers started with "spawn" tokenizing the same way.
        return {"tokenizer": self._tokenizer.to_str(), "context_length": self.context_length}

    def __setstate__(self, state: dict) -> None:
        self.__init__(Tokenizer.from_str(state["tokenizer"]), state["context_length"])

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one row of ids: what precedes the first end token, special tokens left out.

        Words come back separated by spaces, as CLIP's decoder gives them (``"hello , world !"``).
        """
        ids = _id_row(ids)
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        return self._tokenizer.decode(ids, skip_special_tokens=True).strip()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer to `path` (a ``.json`` file, else ``path/tokenizer.json``); returns it."""
        path = Path(path)
        target = path if path.suffix == ".json" else path / TOKENIZER_NAME
        atomic_write(target, lambda tmp: self._tokenizer.save(str(tmp)))
        return target

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ClipTokenizer:
        """Read a tokenizer written by `save` from a ``tokenizer.json`` or the folder that holds it."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}; pass a tokenizer.json written by "
                                    f"vitfast (or the model folder holding it).")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception for any unreadable file
            raise TokenizerError(f"{path} is not a readable tokenizer.json ({e}); save it again with "
                                 f"ClipTokenizer.save.") from None
        if tokenizer.truncation is None:
            raise TokenizerError(f"{path} records no context length (its truncation is off), so it was "
                                 f"not written by vitfast; save it again with ClipTokenizer.save.")
        try:
            return cls(tokenizer, tokenizer.truncation["max_length"])
        except ValueError as e:  # no special tokens, or a context length below 2
            raise TokenizerError(f"{path}: {e}") from None


def _merge_pairs(merges: Iterable[str | Sequence[str]]) -> list[tuple[str, ...]]:
    """Merges as tuples: tokenizers < 0.20 (and merges.txt lines) write one as "a b", later versions ["a", "b"]."""
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def _build(merges: list[tuple[str, str]], context_length: int, vocab: dict[str, int] | None = None) -> ClipTokenizer:
    """A ClipTokenizer over `merges` in rank order and `vocab`, which holds the start and end tokens; by
    default the layout of the module docstring (byte symbols, one token per merge, start, end)."""
    if vocab is None:
        # fromkeys: two merges can spell the same token (ab+c, a+bc); it keeps its first id.
        vocab = {token: i for i, token in enumerate(dict.fromkeys([*_byte_symbols(), *(a + b for a, b in merges)]))}
        vocab |= {SOT: len(vocab), EOT: len(vocab) + 1}
    # The special tokens stay in the model's vocabulary, so marking them special keeps their ids.
    tokenizer = _pipeline(models.BPE(vocab, merges, end_of_word_suffix=EOW))
    tokenizer.add_special_tokens([SOT, EOT])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])])
    return ClipTokenizer(tokenizer, context_length)


# --------------------------------------------------------------------------------------------------
# Hugging Face's tokenizer files (what a CLIPModel folder ships), read and written
# --------------------------------------------------------------------------------------------------

_HF_FIX = "pass a vitfast tokenizer.json with --tokenizer."


def read_hf_tokenizer(folder: str | os.PathLike[str], context_length: int) -> ClipTokenizer | None:
    """CLIP's tokenizer from a Hugging Face folder's files, or None when it has none.

    Reads ``tokenizer.json`` (what transformers' CLIPTokenizerFast, and every CLIPTokenizer of
    transformers 5, saves) or else ``vocab.json`` + ``merges.txt`` (the slow CLIPTokenizer's files).
    The ids are the file's own; only its vocabulary and merges are taken, the cleaning and split being
    CLIP's (see the module docstring), so the ids are open_clip's for the same vocabulary.
    """
    folder = Path(folder)
    fast, vocab_file, merges_file = folder / "tokenizer.json", folder / "vocab.json", folder / "merges.txt"
    try:
        if fast.is_file():
            saved = json.loads(fast.read_text(encoding="utf-8"))
            model = saved.get("model") or {}
            if model.get("type") != "BPE":
                raise TokenizerError(f"{fast} holds a {model.get('type')!r} model, not CLIP's byte-level BPE; "
                                     f"{_HF_FIX}")
            vocab, raw_merges, where = dict(model["vocab"]), model["merges"], fast
            for added in saved.get("added_tokens") or []:
                vocab.setdefault(added["content"], added["id"])  # special tokens kept only there
        elif vocab_file.is_file() and merges_file.is_file():
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
            lines = merges_file.read_text(encoding="utf-8").split("\n")
            raw_merges = [line for line in lines if line.strip() and not line.startswith("#version")]
            where = merges_file
        else:
            return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as e:
        raise TokenizerError(f"{folder}'s tokenizer files are unreadable ({type(e).__name__}: {e}); "
                             f"{_HF_FIX}") from None
    merges = _merge_pairs(raw_merges)
    if any(len(m) != 2 for m in merges) or not isinstance(vocab, dict):
        raise TokenizerError(f"{where} does not hold a vocabulary and merges of two symbols each; {_HF_FIX}")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise TokenizerError(f"{folder}'s vocabulary ids are not 0..{len(vocab) - 1} without gaps; {_HF_FIX}")
    # As CLIP's own reader: only the merges that the vocabulary has room for (a longer merges file is cut).
    merges = merges[: max(0, len(vocab) - _NUM_BYTE_SYMBOLS - 2)]
    absent = [token for token in (*_byte_symbols(), SOT, EOT, *(a + b for a, b in merges)) if token not in vocab]
    if absent:
        raise TokenizerError(f"{folder}'s vocabulary lacks {len(absent)} of CLIP's tokens ({', '.join(absent[:4])}"
                             f"{' ...' if len(absent) > 4 else ''}), so it is not a CLIP byte-level BPE; {_HF_FIX}")
    return _build(merges, context_length, vocab)


def write_hf_tokenizer(tokenizer: ClipTokenizer, folder: str | os.PathLike[str]) -> None:
    """Write `tokenizer` as Hugging Face's CLIPTokenizer files (vocab.json, merges.txt and the configs), which
    transformers' AutoTokenizer loads; its ids are the same as vitfast's for text that needs no cleaning."""
    folder = Path(folder)
    state = json.loads(tokenizer._tokenizer.to_str())
    vocab = {**state["model"]["vocab"], SOT: tokenizer.sot_token_id, EOT: tokenizer.eot_token_id}
    merges = [" ".join(pair) for pair in _merge_pairs(state["model"]["merges"])]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": tokenizer.context_length, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")


@lru_cache(maxsize=4)
def _clip_bpe_cached(path: Path, context_length: int) -> ClipTokenizer:
    """CLIP's tokenizer from the merges file at `path`, built once per file and context length."""
    if not path.is_file():
        raise FileNotFoundError(f"no BPE merges file at {path}; {_MERGES_FIX}")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path} is not a gzipped BPE merges file ({e}); pass CLIP's "
                             f"{CLIP_MERGES_NAME} instead.") from None
    merges = [tuple(line.split()) for line in lines[1 : 1 + _CLIP_NUM_MERGES]]  # line 0: a version header
    if len(merges) < _CLIP_NUM_MERGES or any(len(merge) != 2 for merge in merges):
        raise TokenizerError(f"{path} does not hold {_CLIP_NUM_MERGES} merges of two symbols each after "
                             f"its header line; pass CLIP's {CLIP_MERGES_NAME} instead.")
    return _build(merges, context_length)


def clip_bpe_tokenizer(merges_path: str | os.PathLike[str] | None = None,
                       context_length: int = DEFAULT_CONTEXT_LENGTH) -> ClipTokenizer:
    """CLIP's tokenizer (49408 ids, start 49406, end 49407) from its BPE merges file.

    `merges_path` defaults to the ``bpe_simple_vocab_16e6.txt.gz`` inside an installed open_clip
    package. Built tokenizers are cached, so repeated calls are cheap and return the same object.
    """
    if merges_path is None:  # the copy inside an installed open_clip package, found without importing it
        spec = importlib.util.find_spec("open_clip")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if (Path(folder) / CLIP_MERGES_NAME).is_file():
                merges_path = Path(folder) / CLIP_MERGES_NAME
                break
        else:
            raise FileNotFoundError(f"CLIP's BPE merges file {CLIP_MERGES_NAME} was not found; {_MERGES_FIX}")
    return _clip_bpe_cached(Path(merges_path).resolve(), context_length)


def train_bpe(texts: Iterable[str], vocab_size: int = 1024,
              context_length: int = DEFAULT_CONTEXT_LENGTH) -> ClipTokenizer:
    """Train a CLIP-style BPE on `texts` (read once), for a text tower trained from scratch.

    Same cleaning, split, byte alphabet, ``</w>`` suffix, special tokens and id layout as CLIP's
    tokenizer, so every text encodes, whatever characters it holds. The vocabulary has `vocab_size`
    ids, or fewer once every word of `texts` is a single token. The same texts give the same tokenizer.
    """
    if vocab_size < _NUM_BYTE_SYMBOLS + 2:
        raise ValueError(f"vocab_size must be at least {_NUM_BYTE_SYMBOLS + 2} (256 byte symbols, the "
                         f"same with {EOW}, and the start and end tokens), got {vocab_size}.")
    symbols = _byte_symbols()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,
        show_progress=False,
        initial_alphabet=symbols[:256],
        # Listed up front, the end-of-word symbols get fixed ids; otherwise the trainer numbers them in
        # hash-map order, and ties between equally frequent pairs (broken by id) vary from run to run.
        special_tokens=symbols[256:],
        end_of_word_suffix=EOW,
    )
    tokenizer = _pipeline(models.BPE(end_of_word_suffix=EOW))
    tokenizer.train_from_iterator((_clean(text) for text in texts), trainer=trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return _build(_merge_pairs(merges), context_length)


# --------------------------------------------------------------------------------------------------
# SigLIP's tokenizers: a repo's own tokenizer.json (SentencePiece for SigLIP, Gemma's for SigLIP 2)
# --------------------------------------------------------------------------------------------------

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SIGLIP_FIX = ("pass the model's own tokenizer.json (what open_clip's SigLIP repos ship) with --tokenizer, or a "
               "folder holding it with its tokenizer_config.json.")


def canonicalize(text: str) -> str:
    """open_clip's ``clean="canonicalize"`` (big_vision's rule, which SigLIP was trained with): CLIP's basic
    cleaning (ftfy, HTML unescaped twice), underscores to spaces, ASCII punctuation removed, lower case,
    whitespace collapsed."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.replace("_", " ").translate(_PUNCTUATION).lower().split())


def _token_name(value) -> str | None:
    """A special token as tokenizer_config.json / special_tokens_map.json spell it: a string or a dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class SiglipTokenizer:
    """Texts to a SigLIP's token ids, as open_clip's ``HFTokenizer(clean="canonicalize")`` gives them: the text
    canonicalized, encoded by the repo's ``tokenizer.json`` with its own special tokens (SigLIP's SentencePiece
    ends every text with ``</s>``), cut to the context length and padded to it with the pad token.

    The text tower reads the last position, so every row is padded to the full context, as SigLIP trained.
    Attributes as ClipTokenizer's: ``context_length``, ``pad_token_id``, ``eot_token_id`` (the end token, or
    None), ``sot_token_id`` (None), ``vocab_size``.
    """

    sot_token_id = None

    def __init__(self, tokenizer: Tokenizer, context_length: int, pad_token: str, eos_token: str | None = None):
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1:
            raise ValueError(f"context_length must be a positive integer, got {context_length!r}.")
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise TokenizerError(f"the pad token {pad_token!r} is not in the tokenizer's vocabulary; {_SIGLIP_FIX}")
        self.pad_token, self.pad_token_id = pad_token, pad_id
        self.eos_token = eos_token
        self.eot_token_id = tokenizer.token_to_id(eos_token) if eos_token else None
        tokenizer.enable_truncation(max_length=context_length)
        tokenizer.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_token)
        self._tokenizer = tokenizer
        self.context_length = context_length
        self.vocab_size = tokenizer.get_vocab_size()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids of `texts` as a (len(texts), context_length) int64 tensor (one row for a str)."""
        texts = _text_list(texts)
        length = self.context_length if context_length is None else context_length
        tokenizer = self._tokenizer if length == self.context_length else self.with_context_length(length)._tokenizer
        rows = [tokenizer.encode(canonicalize(text)).ids for text in texts]
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), length)

    def with_context_length(self, context_length: int) -> SiglipTokenizer:
        """A copy that cuts and pads to `context_length` (a model's context, which may differ from the repo's)."""
        return SiglipTokenizer(Tokenizer.from_str(self._tokenizer.to_str()), context_length, self.pad_token,
                               self.eos_token)

    def __getstate__(self) -> dict:
        return {"tokenizer": self._tokenizer.to_str(), "context_length": self.context_length,
                "pad_token": self.pad_token, "eos_token": self.eos_token}

    def __setstate__(self, state: dict) -> None:
        self.__init__(Tokenizer.from_str(state["tokenizer"]), state["context_length"], state["pad_token"],
                      state["eos_token"])

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one row of ids, special tokens (the end and the padding) left out."""
        ids = _id_row(ids)
        return self._tokenizer.decode(ids, skip_special_tokens=True).strip()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` (recording the context length and the padding) and a
        ``tokenizer_config.json`` naming the special tokens, to `path` (a folder); returns the json's path."""
        folder = Path(path)
        target = folder / TOKENIZER_NAME
        atomic_write(target, lambda tmp: self._tokenizer.save(str(tmp)))
        config = {"model_max_length": self.context_length, "pad_token": self.pad_token,
                  **({"eos_token": self.eos_token} if self.eos_token else {}), "clean": "canonicalize"}
        atomic_write(folder / "tokenizer_config.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8"))
        return target


def read_siglip_tokenizer(folder: str | os.PathLike[str], context_length: int) -> SiglipTokenizer | None:
    """A SigLIP's tokenizer from a repo or model folder (``tokenizer.json`` and the special tokens named by
    ``tokenizer_config.json`` or ``special_tokens_map.json``; or a tokenizer json file, with those beside
    it), or None when the folder has no tokenizer.json.

    The pad token is the config's, else the one tokenizer.json pads with; the end token is the config's
    ``eos_token``. A folder that holds only SentencePiece's ``spiece.model`` is refused with the fix.
    """
    folder = Path(folder)
    fast = folder / TOKENIZER_NAME
    if folder.is_file():  # a tokenizer.json (by any name), its configs beside it
        folder, fast = folder.parent, folder
    if not fast.is_file():
        if (folder / "spiece.model").is_file():
            raise TokenizerError(f"{folder} holds SentencePiece's spiece.model but no tokenizer.json, which vitfast "
                                 f"reads through the tokenizers library; {_SIGLIP_FIX}")
        return None
    config: dict = {}
    try:
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins, as in transformers
            if (folder / name).is_file():
                config.update(json.loads((folder / name).read_text(encoding="utf-8")))
        tokenizer = Tokenizer.from_file(str(fast))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{folder}'s tokenizer files are unreadable ({type(e).__name__}: {e}); "
                             f"{_SIGLIP_FIX}") from None
    except Exception as e:  # the library raises a bare Exception for any unreadable file
        raise TokenizerError(f"{fast} is not a readable tokenizer.json ({e}); {_SIGLIP_FIX}") from None
    if config.get("clean", "canonicalize") != "canonicalize":
        raise TokenizerError(f"{folder}'s tokenizer_config.json asks for clean={config['clean']!r}; vitfast's "
                             "SigLIP tokenizer cleans as SigLIP trained (canonicalize).")
    pad = _token_name(config.get("pad_token")) or (tokenizer.padding or {}).get("pad_token")
    if pad is None:
        raise TokenizerError(f"{folder} names no pad token (tokenizer_config.json's pad_token); {_SIGLIP_FIX}")
    return SiglipTokenizer(tokenizer, context_length, pad, _token_name(config.get("eos_token")))


def load_tokenizer(path: str | os.PathLike[str]) -> ClipTokenizer | SiglipTokenizer:
    """What vitfast's readers (train, eval, convert) call: the tokenizer saved at `path` (a ``tokenizer.json``,
    or a model folder holding one): CLIP's BPE (ClipTokenizer), or a SigLIP's (SiglipTokenizer, whose
    tokenizer_config.json beside it names the pad and end tokens)."""
    path = Path(path)
    file = path / TOKENIZER_NAME if path.is_dir() else path
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception:  # missing or unreadable: ClipTokenizer.from_file says which, with the fix
        return ClipTokenizer.from_file(path)
    configs = ("tokenizer_config.json", "special_tokens_map.json")
    names_pad = tokenizer.padding is not None or any("pad_token" in _json_or_empty(file.parent / n) for n in configs)
    if tokenizer.token_to_id(SOT) is not None or tokenizer.truncation is None or not names_pad:
        return ClipTokenizer.from_file(path)  # CLIP's, or an error naming what the file lacks
    return read_siglip_tokenizer(file, tokenizer.truncation["max_length"])


def _json_or_empty(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
