"""Offline tokenizers for tiny random checkpoints.

``byte_level_tokenizer`` trains a small byte-level BPE with the ``tokenizers`` library on a fixed
English corpus (deterministic) and wraps it as ``transformers.PreTrainedTokenizerFast`` with the
given special tokens, so tiny checkpoints of CLIP, SigLIP, LLaVA and Video-LLaVA can be saved
with a tokenizer and loaded back with ``AutoProcessor`` / ``AutoTokenizer`` exactly like real ones.
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


def byte_level_tokenizer(
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
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
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
