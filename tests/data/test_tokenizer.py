"""The CLIP tokenizer against open_clip's (same ids), tokenizer.json round trips, and BPE training."""

from __future__ import annotations

import gzip
import json
import pickle

import pytest
import torch
from tokenizers import Tokenizer, models

from vitfast.tokenizer import ClipTokenizer, TokenizerError, clip_bpe_tokenizer, load_tokenizer, train_bpe

TEXTS = [
    "a photo of a cat",
    "hello, world!!! ...",
    "don't do it, it's what we'll see; they're here, I've, I'm, you'd",
    "1234 and 3.14",
    "café naïve résumé",
    "Ünïcödé",
    "日本語のテキスト",
    "a dog 🐶 and a cat 🐱 🎉",
    "&amp; &lt;b&gt; &amp;amp;",
    "x < y &amp;amp; z",  # ftfy leaves HTML alone in text with a "<": CLIP's two unescapes still apply
    "  lots\tof \n\n whitespace\r\n  ",
    "SHOUTING IN UPPER CASE",
    "",
    # what only ftfy fixes: curly quotes, ligatures, full-width forms, mojibake, decomposed accents
    "don’t “quote” me",
    "ﬁne ﬂowers",
    "ＦＵＬＬ　ｗｉｄｔｈ",
    "cafÃ© doesnÃ¢â‚¬â„¢t",
    "cafe\u0301",
    # Python's final sigma, and two quirks of CLIP's case-insensitive split regex
    "ΟΔΟΣ ΣΟΦΟΣ",
    "a\u0345b",
    "x'ſ",
    # open_clip spells its special tokens <start_of_text>, <end_of_text>: this is plain text to it
    "a <|endoftext|> b",
]

# Many words of equal count: pairs tie often, which is where an unstable trainer shows.
CAPTIONS = [f"A photo of a {thing} {doing} on the {place}."
            for thing in ("cat", "dog", "red car", "blue bird", "bicycle", "horse")
            for doing in ("sitting", "running", "sleeping")
            for place in ("grass", "street", "sofa")]


@pytest.fixture(scope="module")
def reference():
    """open_clip's tokenizer module: the ids to match."""
    return pytest.importorskip("open_clip.tokenizer")


@pytest.fixture(scope="module")
def clip(reference) -> ClipTokenizer:
    return clip_bpe_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_ids_as_open_clip(clip, reference, text):
    assert torch.equal(clip(text), reference.tokenize(text))


def test_batch_as_open_clip(clip, reference):
    ids = clip(TEXTS)
    assert ids.shape == (len(TEXTS), 77) and ids.dtype == torch.long
    assert torch.equal(ids, reference.tokenize(TEXTS))


@pytest.mark.parametrize("n_words", [75, 76, 200])
def test_long_text_truncated_ending_in_eot(clip, reference, n_words):
    text = " ".join(["photo"] * n_words)  # one token per word: 75 words fill the context exactly
    ids = clip(text)
    assert torch.equal(ids, reference.tokenize(text))
    assert ids[0, 0] == clip.sot_token_id and ids[0, -1] == clip.eot_token_id
    assert (ids[0] == clip.eot_token_id).sum() == 1


def test_special_ids_as_open_clip(clip, reference):
    simple = reference.SimpleTokenizer()
    assert (clip.sot_token_id, clip.eot_token_id, clip.vocab_size) == (49406, 49407, 49408)
    assert (clip.sot_token_id, clip.eot_token_id, clip.vocab_size) == (
        simple.sot_token_id, simple.eot_token_id, simple.vocab_size)
    assert clip.pad_token_id == 0 and clip.context_length == 77


def test_context_length_override(clip, reference):
    texts = TEXTS[:6]
    for length in (2, 8, 100):
        assert torch.equal(clip(texts, length), reference.tokenize(texts, context_length=length))
    assert clip(texts).shape == (6, 77)


@pytest.mark.parametrize("length", [0, 1, 7.5])
def test_bad_context_length(clip, length):
    with pytest.raises(ValueError, match="context_length must be an integer of at least 2"):
        clip("a cat", context_length=length)


def test_non_string_text(clip):
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        clip(["a cat", 3])


def test_decode(clip):
    assert clip.decode(clip("Hello, World!!! it's")[0]) == "hello , world !!! it 's"
    assert clip.decode(clip("café 🐱 &amp; ΟΔΟΣ")[0].tolist()) == "café 🐱 & οδος"
    assert clip.decode(clip(" ".join(["photo"] * 100))[0]) == " ".join(["photo"] * 75)


def test_save_load_round_trip(clip, tmp_path):
    path = clip.save(tmp_path / "model")
    assert path == tmp_path / "model" / "tokenizer.json" and path.is_file()
    for loaded in (load_tokenizer(tmp_path / "model"), ClipTokenizer.from_file(path)):
        assert torch.equal(loaded(TEXTS), clip(TEXTS))
        assert (loaded.context_length, loaded.sot_token_id, loaded.eot_token_id, loaded.vocab_size) == (
            77, 49406, 49407, 49408)


def test_pickle_round_trip(clip):
    # what DataLoader workers started with "spawn" receive
    loaded = pickle.loads(pickle.dumps(clip))
    assert torch.equal(loaded(TEXTS), clip(TEXTS)) and loaded.context_length == 77


def test_saved_file_alone_tokenizes_like_clip(clip, tmp_path):
    # Text that needs none of ftfy's fixes gets the same ids from tokenizer.json in any tokenizers client.
    plain = Tokenizer.from_file(str(clip.save(tmp_path)))
    text = "  A Photo of\tthe CAT's 2 toys, isn't it?"
    assert plain.encode(text).ids == clip(text)[0].tolist()


def test_clip_tokenizer_is_cached(clip):
    assert clip_bpe_tokenizer() is clip


def test_missing_merges_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--bpe-path"):
        clip_bpe_tokenizer(tmp_path / "nowhere.txt.gz")


def test_merges_file_without_open_clip(monkeypatch):
    monkeypatch.setattr("vitfast.tokenizer.importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="--bpe-path.*pip install open_clip_torch"):
        clip_bpe_tokenizer()


def test_corrupt_merges_file(tmp_path):
    not_gzip = tmp_path / "merges.txt.gz"
    not_gzip.write_text("i n\nt h\n")
    with pytest.raises(TokenizerError, match="merges.txt.gz is not a gzipped BPE merges file"):
        clip_bpe_tokenizer(not_gzip)
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\ni n\nt h\n")
    with pytest.raises(TokenizerError, match="short.txt.gz does not hold 48894 merges"):
        clip_bpe_tokenizer(short)


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer file at .*tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer file at .*other.json"):
        load_tokenizer(tmp_path / "other.json")


def test_load_corrupt(tmp_path):
    good = train_bpe(CAPTIONS).save(tmp_path / "good.json").read_text()
    for name, text in (("garbage.json", "{not json"), ("cut.json", good[: len(good) // 2])):
        (tmp_path / name).write_text(text)
        with pytest.raises(TokenizerError, match=f"{name} is not a readable tokenizer.json"):
            load_tokenizer(tmp_path / name)


def test_load_foreign_tokenizer(tmp_path):
    foreign = Tokenizer(models.BPE())
    foreign.save(str(tmp_path / "untruncated.json"))
    with pytest.raises(TokenizerError, match="untruncated.json records no context length"):
        load_tokenizer(tmp_path / "untruncated.json")
    foreign.enable_truncation(max_length=77)
    foreign.save(str(tmp_path / "no_specials.json"))
    with pytest.raises(TokenizerError, match=r"no_specials.json: the tokenizer has no <\|startoftext\|>"):
        load_tokenizer(tmp_path / "no_specials.json")


def test_train_bpe_layout():
    tok = train_bpe(CAPTIONS, vocab_size=530)
    # 512 byte symbols, 16 merges, then the start and end tokens: the end token is never the pad id 0.
    assert (tok.vocab_size, tok.sot_token_id, tok.eot_token_id) == (530, 528, 529)
    ids = tok(CAPTIONS[:3])
    assert ids.shape == (3, 77) and (ids[:, 0] == 528).all()
    assert ((ids == 529).sum(dim=1) == 1).all()


def test_train_bpe_encodes_and_decodes():
    tok = train_bpe(CAPTIONS)
    assert tok.vocab_size < 1024  # every caption word became one token before the vocabulary filled
    for word in ("photo", "bicycle", "street", "."):
        assert tok(word)[0, 2] == tok.eot_token_id  # the start token, the word's one token, the end token
    assert tok.decode(tok("A red dog, running on the grass!")[0]) == "a red dog , running on the grass !"
    # characters never seen in training still encode, through the byte symbols
    assert tok.decode(tok("Qüx 🐱 Ωmega — 3.14")[0]) == "qüx 🐱 ωmega — 3 . 1 4"


def test_train_bpe_deterministic(tmp_path):
    first = train_bpe(CAPTIONS, vocab_size=600).save(tmp_path / "a.json")
    for attempt in range(5):
        again = train_bpe(CAPTIONS, vocab_size=600).save(tmp_path / f"b{attempt}.json")
        assert again.read_text() == first.read_text()


def test_train_bpe_save_load(tmp_path):
    tok = train_bpe(CAPTIONS, context_length=32)
    loaded = load_tokenizer(tok.save(tmp_path))
    assert loaded.context_length == 32 and loaded.eot_token_id == tok.eot_token_id
    assert torch.equal(loaded(CAPTIONS + TEXTS), tok(CAPTIONS + TEXTS))


def test_train_bpe_vocab_too_small():
    with pytest.raises(ValueError, match="vocab_size must be at least 514"):
        train_bpe(CAPTIONS, vocab_size=513)


def test_hf_tokenizer_files_keep_their_ids_and_refuse_gaps(tmp_path):
    from vitfast.tokenizer import read_hf_tokenizer, write_hf_tokenizer

    tok = train_bpe(["a photo of a cat", "a dog"] * 5, vocab_size=530, context_length=12)
    write_hf_tokenizer(tok, tmp_path)
    again = read_hf_tokenizer(tmp_path, 12)
    assert (again.sot_token_id, again.eot_token_id, again.vocab_size) == (tok.sot_token_id, tok.eot_token_id,
                                                                          tok.vocab_size)
    assert torch.equal(again(["a photo of a dog"]), tok(["a photo of a dog"]))
    # a fast tokenizer.json keeping the special tokens only among its added tokens
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    merges = (tmp_path / "merges.txt").read_text().split("\n")[1:-1]
    added = [{"id": vocab.pop(t), "content": t, "special": True} for t in ("<|startoftext|>", "<|endoftext|>")]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges},
                                                         "added_tokens": added}))
    assert torch.equal(read_hf_tokenizer(tmp_path, 12)(["a cat"]), tok(["a cat"]))
    (tmp_path / "tokenizer.json").unlink()
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    vocab["<|endoftext|>"] += 5  # a gap before the end token
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(TokenizerError, match="without gaps"):
        read_hf_tokenizer(tmp_path, 12)
