"""``preprocess`` on a full disk: one line, no temp files, no dataset that looks complete."""

from __future__ import annotations

import errno
import importlib
import os
from pathlib import Path

import pytest

from megatron_detox.diskfull import DiskFull
from megatron_detox.tokenizers import load_tokenizer

# (megatron_detox.data re-exports the function `preprocess` under the module's name)
preprocess_module = importlib.import_module("megatron_detox.data.preprocess")


def test_a_full_disk_mid_preprocess_leaves_no_partial_dataset(tmp_path: Path, corpus: tuple[Path, str, int],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    text_file, spec, _ = corpus
    real_add = preprocess_module._add_document
    added = []

    def add_until_full(outputs, document, report):  # type: ignore[no-untyped-def]
        if len(added) == 50:  # the disk fills while .bin grows
            outputs[0].builder.data_file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        added.append(1)
        real_add(outputs, document, report)

    monkeypatch.setattr(preprocess_module, "_add_document", add_until_full)
    with pytest.raises(DiskFull, match=rf"^{tmp_path / 'wiki'}.bin: no space left on device \(.* free on "):
        preprocess_module.preprocess(text_file, tmp_path / "wiki", load_tokenizer(spec), progress=False)
    assert list(tmp_path.iterdir()) == []
