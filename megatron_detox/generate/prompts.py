"""What to generate: prompts read from JSONL, expanded into numbered work items.

Sample ids are dense and stable: ``id = prompt_index * repeat + sample_index`` for a
prompt file, ``id = sample_index`` for unconditional samples. ``prompt_index`` is the
0-based line of the prompt file, so a record can always be traced back to its line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_detox.errors import UserError
from megatron_detox.jsonl import get_dotted, iter_jsonl


@dataclass(frozen=True)
class WorkItem:
    id: int
    prompt_index: int | None
    """0-based line of the prompt file; None for unconditional samples."""
    sample_index: int
    prompt: str


def read_prompts(path: str | Path, key: str = "prompt.text", allow_empty: bool = False, limit: int = 0) -> list[str]:
    """Prompt texts, one per line of a JSONL file, taken from the dotted ``key`` (the first
    ``limit`` lines only, when it is > 0).

    Every problem (bad UTF-8, malformed JSON, missing key, a non-string or empty prompt)
    is a ``UserError`` naming the file and 1-based line; no line is silently skipped.
    """
    path = Path(path)
    prompts: list[str] = []
    for number, record in iter_jsonl(path, allow_blank=False):  # prompt_index = line - 1
        where = f"{path}:{number}"
        try:
            text = get_dotted(record, key)
        except KeyError:
            raise UserError(f"{where}: field {key!r} is missing; pass --prompt-key with the right "
                            f"dotted key") from None
        if not isinstance(text, str):
            raise UserError(f"{where}: field {key!r} is {type(text).__name__}, expected a string")
        if not text.strip() and not allow_empty:
            raise UserError(f"{where}: field {key!r} is an empty prompt; remove it or pass "
                            f"--allow-empty-prompts to generate from BOS")
        prompts.append(text)
        if len(prompts) == limit:
            break
    if not prompts:
        raise UserError(f"{path}: no prompts in the file")
    return prompts


def prompt_items(prompts: list[str], repeat: int) -> list[WorkItem]:
    """``repeat`` samples of every prompt, ids in (prompt, sample) order."""
    return [WorkItem(p * repeat + s, p, s, text) for p, text in enumerate(prompts) for s in range(repeat)]


def unconditional_items(num_samples: int) -> list[WorkItem]:
    """``num_samples`` samples started from the BOS/EOS token alone."""
    return [WorkItem(i, None, i, "") for i in range(num_samples)]


def default_stop_ids(tokenizer: Any, cfg: Any) -> tuple[int, ...]:
    """Where a sample ends unless told to ignore EOS: the tokenizer's end-of-document token and the
    model's eos. The embedded SmolLM2-135M-Instruct GGUF declares ``<|im_end|>`` (2) as both, so its
    samples stop at id 2 only (``generate.ignore_eos`` keeps every sample at ``max_new_tokens``)."""
    eos = getattr(cfg, "eos_token_id", None)
    return tuple(sorted({int(tokenizer.eod)} | ({int(eos)} if eos is not None else set())))
