"""An offline byte-level tokenizer: every string encodes, nothing is downloaded."""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def make_byte_tokenizer(
    special_tokens: list[str],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str | None = None,
    named_tokens: dict[str, str] | None = None,
    padding_side: str = "left",
) -> PreTrainedTokenizerFast:
    """Build a byte-level BPE tokenizer with the 256 byte tokens, no merges, and ``special_tokens``.

    Ids 0..255 are the bytes; special tokens follow in the order given, so a family's token ids are
    stable across runs. ``named_tokens`` become tokenizer attributes (``tokenizer.image_token``,
    ``tokenizer.boi_token``...) that some processors read.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    ordered = list(dict.fromkeys(special_tokens))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ordered])
    kwargs: dict[str, object] = {}
    for name, value in (
        ("bos_token", bos_token),
        ("eos_token", eos_token),
        ("pad_token", pad_token),
        ("unk_token", unk_token),
    ):
        if value is not None:
            kwargs[name] = value
    if named_tokens:
        kwargs["extra_special_tokens"] = dict(named_tokens)
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side=padding_side, **kwargs)
