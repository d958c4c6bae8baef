"""Checkpoint conversion: Megatron-LM "torch" folders <-> ours (DCP) <-> Hugging Face, GGUF in.

Every format is a *source* (read one tensor group at a time, full tensors in our
names) and, except GGUF, a *sink*; ``convert`` moves groups from one to the other,
resharding for Megatron's TP x PP on the way out. See docs/conversion.md for the
name and layout map.
"""

from megatron_detox.convert.run import ConvertOptions, convert, open_source

__all__ = ["ConvertOptions", "convert", "open_source"]
