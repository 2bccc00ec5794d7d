"""Offline tokenizers for tiny random checkpoints: ``tiny_tokenizer(kind, **options)``, the one
builder every tiny checkpoint uses.

Kinds (all deterministic, built from the small vocabulary / corpus below, saved with the
checkpoint and loaded back with ``AutoProcessor`` / ``AutoTokenizer`` exactly like real ones):

- ``bpe``: a byte-level BPE trained with the ``tokenizers`` library, as
  ``PreTrainedTokenizerFast`` (CLIP and SigLIP text towers, LLaVA, Video-LLaVA);
- ``wordpiece``: a ``BertTokenizer`` over a small WordPiece vocabulary (BLIP, Q-Former,
  Grounding DINO's BERT);
- ``word``: a word-level ``PreTrainedTokenizerFast`` (decoder LMs such as OPT in BLIP-2);
- ``clip``: a character-level ``CLIPTokenizer`` (byte alphabet, no merges; OWLv2).
"""

from __future__ import annotations

from typing import Any

_CORPUS = [
    "a photo of a cat", "a photo of a dog", "a picture of a person", "an image of a cup of coffee",
    "how many people appear in the video?", "what is happening in this video?", "USER: ASSISTANT:",
    "the astronaut stands next to a flag", "coins on a table", "a rocket on the launch pad",
    "a horse running in a field", "printed text on a page", "the quick brown fox jumps over the lazy dog",
    "Describe the image. Answer the question. yes no one two three four five six seven eight nine ten",
]  # fmt: skip


TINY_WORDS = (
    "a an the of in on with and is are what how many which color photo photography picture image "
    "question answer cat dog cup coffee mug table person man woman rocket coin coins page text "
    "sitting red blue green white black yes no one two three four"
).split()

def _bpe(
    bos: str = "<s>",
    eos: str = "</s>",
    pad: str = "<pad>",
    unk: str = "<unk>",
    extra: tuple[str, ...] = (),
    vocab_size: int = 400,
    model_max_length: int = 512,
    add_eos: bool = True,
    corpus: list[str] | None = None,
    named_extra: dict[str, str] | None = None,
    template: bool = True,
) -> Any:
    """A deterministic byte-level BPE (``PreTrainedTokenizerFast``). Special token ids come first:
    ``pad, bos, eos, unk, *extra`` -> 0, 1, 2, 3, 4... ``extra`` tokens (e.g. ``<image>``) are added
    as additional special tokens so they are never split; ``named_extra`` (``{"image_token":
    "<image>"}``) adds them as named special tokens instead, as multimodal processors expect.
    With ``template`` encoding adds ``bos`` before the text and, with ``add_eos``, ``eos`` after it
    (CLIP-style text encoders pool at the eos token); chat models leave that to their chat template.
    ``corpus`` replaces the built-in training text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    named = dict(named_extra or {})
    specials = [pad, bos, eos, unk, *extra, *named.values()]
    tok = Tokenizer(models.BPE(unk_token=unk if template else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((corpus or _CORPUS) * 4, trainer=trainer)
    if template:
        end = f" {eos}" if add_eos else ""
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A{end}", pair=f"{bos} $A{end} $B{end}",
            special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
        )  # fmt: skip
    kwargs: dict[str, Any] = {"extra_special_tokens": named} if named else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        additional_special_tokens=list(extra) or None,
        model_max_length=model_max_length,
        **kwargs,
    )


def _wordpiece_vocab(extra: tuple[str, ...] = ()) -> dict[str, int]:
    """A small WordPiece vocabulary (BERT special tokens, punctuation, common words)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *extra, ".", ",", "?", "!", "'", *TINY_WORDS]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def _wordpiece(extra: tuple[str, ...] = (), **kwargs: Any) -> Any:
    from transformers import BertTokenizer

    return BertTokenizer(vocab=_wordpiece_vocab(extra), **kwargs)


def _word(specials: dict[str, str], extra: tuple[str, ...] = ()) -> Any:
    """A word-level fast tokenizer (decoder LMs such as OPT); ``specials``: role -> token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = list(dict.fromkeys([*specials.values(), *extra, ".", ",", "?", ":", *TINY_WORDS]))
    vocab = {t: i for i, t in enumerate(tokens)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials["unk_token"]))
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, **specials)
    return fast


def _clip() -> Any:
    """A character-level ``CLIPTokenizer`` (byte alphabet, no merges)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    tokens = ["!", *[c for c in chars if c != "!"], *[c + "</w>" for c in chars], "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], pad_token="!")


_KINDS = {"bpe": _bpe, "wordpiece": _wordpiece, "word": _word, "clip": _clip}


def tiny_tokenizer(kind: str, *args: Any, **options: Any) -> Any:
    """A tiny tokenizer of ``kind`` (``bpe``, ``wordpiece``, ``word``, ``clip``; see the module
    docstring); ``options`` are that kind's (special tokens, vocabulary size, ...)."""
    try:
        build = _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown tiny tokenizer kind '{kind}'; available: {', '.join(_KINDS)}") from None
    return build(*args, **options)


#: the layer sizes most tiny models share (transformers config keyword names)
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def save(folder: Any, *parts: Any) -> None:
    """``save_pretrained(folder)`` of each part (model, processor, tokenizer)."""
    for part in parts:
        part.save_pretrained(folder)
