"""``megatron-detox data preprocess``: JSONL/text → megatron-core ``.bin/.idx``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="data preparation", description="Data preparation commands.")
    commands = parser.add_subparsers(dest="data_command", metavar="<data command>", required=True)
    pre = commands.add_parser(
        "preprocess",
        help="tokenize JSONL/text into a Megatron indexed dataset (.bin/.idx)",
        description="Output opens with megatron-core IndexedDataset (and Megatron-LM). A bad line stops the run "
                    "with file:line unless --skip-bad, which lists skipped lines in PREFIX.report.json.",
    )
    pre.add_argument("--input", required=True, help="a .jsonl file (text under --json-key) or plain text")
    pre.add_argument("--json-key", default="text", help="JSON key holding the text (dotted for nested)")
    pre.add_argument("--tokenizer", required=True,
                     help="a model preset (e.g. smollm2-135m: its own tokenizer) or tokenizer files: .gguf, "
                          "tokenizer.json, .model, VOCAB.json,MERGES.txt or a folder")
    pre.add_argument("--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    pre.add_argument("--append-eod", action="store_true", help="append the end-of-document token to each record")
    pre.add_argument("--context-key", default=None,
                     help="JSON key of a context (e.g. a prompt) put before the text and left out of the loss; "
                          "writes the loss mask PREFIX.loss_mask.bin/.idx, which training applies")
    pre.add_argument("--ends-key", default=None,
                     help="JSON key of a true/false flag: false (the text was cut, not ended) leaves the "
                          "end-of-document token out of the loss (needs --append-eod; writes the loss mask)")
    pre.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    pre.add_argument("--skip-bad", action="store_true", help="skip bad lines (listed in the report) instead of stopping")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    pre.set_defaults(func=run_preprocess)


def run_preprocess(args: argparse.Namespace) -> int:
    from megatron_detox.data import preprocess  # noqa: PLC0415
    from megatron_detox.tokenizers import load_tokenizer  # noqa: PLC0415

    tokenizer = load_tokenizer(_tokenizer_spec(args.tokenizer))
    report = preprocess(args.input, args.output_prefix, tokenizer, json_key=args.json_key,
                        append_eod=args.append_eod, context_key=args.context_key, ends_key=args.ends_key,
                        workers=max(args.workers, 1), skip_bad=args.skip_bad,
                        progress=not args.no_progress)
    masked = f" ({report.loss_tokens} carry loss)" if report.loss_tokens != report.tokens else ""
    print(f"{report.documents} documents, {report.tokens} tokens{masked} -> {report.output_prefix}.bin/.idx"
          + (f"; skipped {len(report.skipped)} bad lines (see {report.output_prefix}.report.json)"
             if report.skipped else "")
          + (f"; {report.empty_documents} records with empty text gave no tokens and were not written"
             " (--append-eod keeps them)" if report.empty_documents else ""), file=sys.stderr)
    return 0


def _tokenizer_spec(spec: str) -> str:
    """A preset name means that model's tokenizer (the embedded GGUF for smollm2-135m)."""
    from megatron_detox.models.presets import PRESETS  # noqa: PLC0415

    if spec in PRESETS and not Path(spec).exists():
        from megatron_detox.inference import tokenizer_spec_for  # noqa: PLC0415

        return tokenizer_spec_for(spec, PRESETS[spec])
    return spec
