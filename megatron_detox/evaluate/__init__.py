"""Evaluation: RealToxicityPrompts metrics, perplexity, lm-eval adapter, BOLD, report.

Public API (heavy dependencies — lm-eval, matplotlib, the generation engine — load
only in the modules that need them)::

    from megatron_detox.evaluate import (
        load_rtp_prompts, compute_toxicity_metrics, metrics_from_scored, run_toxicity_eval,
        compute_perplexity, load_documents, run_bold, build_report)
    from megatron_detox.evaluate.lm_eval_adapter import MegatronDetoxLM   # lm-eval "megatron-detox"
    from megatron_detox.evaluate.generation import build_generate_fn      # generation stage glue

See docs/evaluation.md for the metric definitions and the files each command writes.
"""

from megatron_detox.evaluate.bold import bold_perplexity, bold_toxicity, load_bold_domain, run_bold
from megatron_detox.evaluate.perplexity import PerplexityResult, compute_perplexity, load_documents
from megatron_detox.evaluate.prompts import TOXIC_THRESHOLD, RtpPrompt, load_rtp_prompts
from megatron_detox.evaluate.report import build_report
from megatron_detox.evaluate.rtp_metrics import SAMPLE_THRESHOLD, compute_toxicity_metrics
from megatron_detox.evaluate.toxicity_eval import metrics_from_scored, run_toxicity_eval

__all__ = [
    "SAMPLE_THRESHOLD",
    "TOXIC_THRESHOLD",
    "PerplexityResult",
    "RtpPrompt",
    "bold_perplexity",
    "bold_toxicity",
    "build_report",
    "compute_perplexity",
    "compute_toxicity_metrics",
    "load_bold_domain",
    "load_documents",
    "load_rtp_prompts",
    "metrics_from_scored",
    "run_bold",
    "run_toxicity_eval",
]
