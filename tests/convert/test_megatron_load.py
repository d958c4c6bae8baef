"""Megatron shards are data: code in a pickle never runs; damaged folders are one-line errors, exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from megatron_fixture import GPT, random_weights, write_megatron

from megatron_detox.cli import main


class Payload:
    """Unpickling this calls os.mkdir(marker): proof of code execution if the marker appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def _convert_error(capsys: pytest.CaptureFixture[str], root: Path, *extra: str) -> str:
    code = main(["convert", "--no-progress", "--from", "megatron", "--to", "dcp", "--input", str(root),
                 "--output", str(root.parent / "out"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not (root.parent / "out").exists()
    return err[0]


def test_a_pickle_with_a_code_payload_is_refused_and_never_runs(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "payload-ran"
    root = write_megatron(tmp_path / "mlm", GPT, random_weights(GPT), 2, 1, 3.0, "mcore",
                          edit=lambda t, p, obj: obj.update(optimizer=Payload(marker)) if t == 1 else None)
    file = root / "iter_0001000" / "mp_rank_01" / "model_optim_rng.pt"
    line = _convert_error(capsys, root)
    assert line == (f"megatron-detox convert: error: {file}: refusing to load: it references posix.mkdir, which a "
                    "Megatron checkpoint never needs (untrusted or corrupt file)")
    assert not marker.exists()
    torch.save({"optimizer": Payload(marker)}, tmp_path / "alone.pt")
    torch.load(tmp_path / "alone.pt", weights_only=False)  # the payload is real: an unrestricted load runs it
    assert marker.is_dir()


def test_missing_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_megatron(tmp_path / "mlm", GPT, random_weights(GPT), 2, 2, 3.0, "mcore")
    missing = root / "iter_0001000" / "mp_rank_01_001" / "model_optim_rng.pt"
    missing.unlink()
    assert _convert_error(capsys, root).endswith(f"error: {missing}: shard file is missing (args give TP=2 x PP=2)")


def test_tp_size_differs_between_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def edit(t: int, p: int, obj: dict) -> None:
        if (t, p) == (1, 1):
            obj["args"].tensor_model_parallel_size = 4

    root = write_megatron(tmp_path / "mlm", GPT, random_weights(GPT), 2, 2, 3.0, "mcore", edit=edit)
    odd = root / "iter_0001000" / "mp_rank_01_001" / "model_optim_rng.pt"
    assert f"error: {odd}: args give TP=4 x PP=2, but " in _convert_error(capsys, root)


def test_more_tp_folders_than_args_say(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_megatron(tmp_path / "mlm", GPT, random_weights(GPT), 2, 1, 3.0, "mcore")
    folder = root / "iter_0001000"
    (folder / "mp_rank_02").mkdir()
    line = _convert_error(capsys, root)
    assert line.endswith(f"{folder / 'mp_rank_00' / 'model_optim_rng.pt'}: args.tensor_model_parallel_size=2 but "
                         f"{folder} holds 3 tensor-parallel ranks (mp_rank_00..mp_rank_02)")


def test_unknown_checkpoint_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_megatron(tmp_path / "mlm", GPT, random_weights(GPT), 2, 1, 4.5, "mcore")
    file = root / "iter_0001000" / "mp_rank_00" / "model_optim_rng.pt"
    assert _convert_error(capsys, root).endswith(f"{file}: checkpoint_version 4.5 is unknown (known: 0, 1.0, 2.0, 3.0)")


def test_vocabulary_larger_than_the_target_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_megatron(tmp_path / "mlm", GPT, random_weights(GPT), 2, 1, 3.0, "mcore")
    file = root / "iter_0001000" / "mp_rank_00" / "model_optim_rng.pt"
    assert _convert_error(capsys, root, "--vocab-size", "250").endswith(
        f"{file}: the model's vocabulary has 300 tokens, more than the target tokenizer's 250; use the tokenizer "
        "the model was trained with")


def test_bad_tracker_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_megatron(tmp_path / "mlm", GPT, random_weights(GPT), 2, 1, 3.0, "mcore")
    (root / "latest_checkpointed_iteration.txt").write_text("2000")
    assert _convert_error(capsys, root).endswith(
        f"{root / 'latest_checkpointed_iteration.txt'}: names iter_0002000, which does not exist")
