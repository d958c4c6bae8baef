"""Loading DCP checkpoints without executing code from them.

``torch.distributed.checkpoint`` unpickles ``.metadata`` with plain ``pickle.load`` and
non-tensor entries with an unrestricted ``torch.load``; either runs arbitrary code
from a crafted file. Here ``.metadata`` is read by an unpickler that only builds DCP's
own metadata classes, and non-tensor entries are read with ``weights_only=True``.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

from megatron_detox.errors import UserError

_ALLOWED_MODULES = ("torch.distributed.checkpoint.metadata",)
_ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # looks a torch.layout up by name
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A global outside the allow-list (as opposed to a truncated or garbled pickle)."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _ALLOWED_MODULES or (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise _ForbiddenGlobal(f"{module}.{name}")


def read_metadata(path: Path) -> Metadata:
    """The DCP metadata of checkpoint folder ``path``, or a UserError saying why not."""
    file = path / ".metadata"
    if not file.is_file():
        raise UserError(f"{path}: no .metadata file; not a complete checkpoint (delete it or point elsewhere)")
    try:
        with open(file, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except _ForbiddenGlobal as error:
        raise UserError(f"{file}: refusing to load: it references {error}, which a checkpoint never holds "
                        "(untrusted or corrupt file)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise UserError(f"{file}: corrupt or truncated checkpoint metadata ({type(error).__name__}); "
                        "delete the checkpoint or point to another one") from None
    if not isinstance(metadata, Metadata):
        raise UserError(f"{file}: not DCP checkpoint metadata (holds a {type(metadata).__name__})")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise UserError(f"{self.path}: per-rank metadata files are not supported")
        metadata = read_metadata(Path(self.path))
        storage_meta = metadata.storage_meta if metadata.storage_meta is not None else StorageMeta()
        storage_meta.load_id = self.load_id
        metadata.storage_meta = storage_meta
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as error:
            found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(error))
            what = f"it references {found.group(1)}" if found else "it holds a pickled object, not plain data"
            raise UserError(f"checkpoint entry {read_item.dest_index.fqn!r}: refusing to load: {what} "
                            "(untrusted or corrupt file)") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._nested_dict import set_element  # noqa: PLC0415

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def safe_load(state: dict[str, Any], path: Path, *, no_dist: bool = False) -> None:
    """``dcp.load`` into ``state`` in place; corrupt files become one-line UserErrors."""
    read_metadata(path)  # every rank checks, so every rank raises the same UserError
    try:
        with warnings.catch_warnings():  # a single process without a process group is intended
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(state, storage_reader=SafeFileSystemReader(str(path)), planner=SafeLoadPlanner(),
                     no_dist=no_dist or not (dist.is_available() and dist.is_initialized()))
    except UserError:
        raise
    except (Exception, CheckpointException) as error:  # CheckpointException is a BaseException
        user = _find_user_error(error)
        if user is not None:
            raise user from None
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise UserError(f"{path}: corrupt or truncated checkpoint ({type(error).__name__}: {first}); "
                        "delete it or point to another one") from None


def _find_user_error(error: BaseException) -> UserError | None:
    if isinstance(error, UserError):
        return error
    failures = getattr(error, "failures", None)  # CheckpointException: {rank: exception}
    if isinstance(failures, dict):
        for failure in failures.values():
            found = _find_user_error(failure[0] if isinstance(failure, tuple) else failure)
            if found is not None:
                return found
    cause = error.__cause__ or error.__context__
    return _find_user_error(cause) if cause is not None else None
