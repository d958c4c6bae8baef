"""Tokenizers: one small interface, four real backends (HF ``tokenizers``, sentencepiece).

- ``load_gguf_tokenizer``: the tokenizer embedded in a GGUF file (the default model's)
- ``load_hf_tokenizer``: a Hugging Face ``tokenizer.json``
- ``load_gpt2_bpe``: GPT-2 ``vocab.json`` + ``merges.txt`` (Megatron's GPT2BPETokenizer)
- ``load_sentencepiece``: a sentencepiece ``.model``
- ``load_tokenizer``: any of the above, chosen from what the path is
"""

from megatron_detox.tokenizers.base import HFTokenizer, Tokenizer
from megatron_detox.tokenizers.gguf_vocab import load_gguf_tokenizer
from megatron_detox.tokenizers.gpt2_bpe import load_gpt2_bpe
from megatron_detox.tokenizers.hf_json import load_hf_tokenizer
from megatron_detox.tokenizers.load import load_tokenizer
from megatron_detox.tokenizers.sentencepiece_model import SentencePieceTokenizer, load_sentencepiece

__all__ = [
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "load_gguf_tokenizer",
    "load_gpt2_bpe",
    "load_hf_tokenizer",
    "load_sentencepiece",
    "load_tokenizer",
]
