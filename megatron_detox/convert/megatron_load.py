"""Open Megatron-LM ``model_optim_rng.pt`` files without running code from them.

The files are pickles. ``torch.load(weights_only=True)`` rebuilds tensors and plain
containers only; a Megatron file also holds an ``argparse.Namespace`` (``args``), the
enums Megatron stores in it (``ModelType``, ``AttnBackend``, ...) and numpy arrays in
its RNG state. Exactly those globals are allow-listed, for the duration of one load
(``torch.serialization.safe_globals``, no process-wide registration). Enums are
rebuilt as inert stand-ins (:class:`MegatronEnum`) so Megatron need not be installed
and none of its code runs. Any other global is refused with one line naming the file
and the global.

Tensors are memory-mapped (``mmap=True``): opening a file reads only the pickle, and
a tensor's bytes are read when that tensor is used, so a converter can pull one
tensor group at a time out of a file larger than memory.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy
import torch

from megatron_detox.errors import UserError


class MegatronEnum:
    """An enum member from a Megatron checkpoint's ``args``, kept as its value only."""

    qualname = "?"

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<{self.qualname} {self.value!r}>"


# Enums Megatron-LM puts in ``args`` (legacy and Megatron-Core paths, across releases).
MEGATRON_ENUMS = (
    "megatron.core.enums.ModelType",
    "megatron.core.transformer.enums.AttnBackend",
    "megatron.core.transformer.enums.AttnMaskType",
    "megatron.core.transformer.enums.AttnType",
    "megatron.core.transformer.enums.LayerType",
    "megatron.core.model_parallel_config.ModelType",
    "megatron.model.enums.AttnMaskType",
    "megatron.model.enums.AttnType",
    "megatron.model.enums.LayerType",
    "megatron.model.enums.PositionEmbeddingType",
    "megatron.legacy.model.enums.AttnMaskType",
    "megatron.legacy.model.enums.AttnType",
    "megatron.legacy.model.enums.LayerType",
    "megatron.legacy.model.enums.PositionEmbeddingType",
    "megatron.core.enums.Fp8Recipe",
)


def _enum_stand_in(qualname: str) -> type[MegatronEnum]:
    return type(qualname.rpartition(".")[2], (MegatronEnum,), {"qualname": qualname})


def allowed_globals() -> list[Any]:
    """The globals a Megatron checkpoint may reference, as ``safe_globals`` entries."""
    reconstruct = numpy.ndarray.__reduce__(numpy.zeros(1))[0]  # numpy's own _reconstruct, 1.x or 2.x
    entries: list[Any] = [argparse.Namespace, numpy.ndarray, numpy.dtype]
    entries += sorted({type(numpy.dtype(code)) for code in "?bBhHiIlLqQefdFD"}, key=str)  # numpy.dtypes.*DType
    entries += [(reconstruct, f"{module}.multiarray._reconstruct") for module in ("numpy.core", "numpy._core")]
    entries += [(_enum_stand_in(name), name) for name in MEGATRON_ENUMS]
    return entries


def load_megatron_file(path: Path) -> dict[str, Any]:
    """The top-level dict of one ``model_optim_rng.pt``; tensors memory-mapped when possible."""
    if not path.is_file():
        raise UserError(f"{path}: shard file is missing")
    mmap = zipfile.is_zipfile(path)  # only the (default since torch 1.6) zip format can be mapped
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(error))
        what = f"it references {found.group(1) or found.group(2)}" if found else "it holds objects other than tensors and args"
        raise UserError(f"{path}: refusing to load: {what}, which a Megatron checkpoint never needs "
                        "(untrusted or corrupt file)") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a Megatron checkpoint dict")
    return obj
