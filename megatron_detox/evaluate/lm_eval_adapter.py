"""EleutherAI ``lm-evaluation-harness`` model class over our models.

``MegatronDetoxLM`` is registered in lm-eval's model registry as ``"megatron-detox"``
when this module is imported. It takes any callable ``tokens [batch, seq] ->
logits [batch, seq, vocab]`` (a plain ``Transformer``, or a parallelized one whose
forward returns full logits) and our ``Tokenizer``; or ``pretrained=<model spec>``
through ``lm_eval``'s ``model_args`` string.

- ``loglikelihood``: lm-eval's ``TemplateLM`` splits context/continuation tokens;
  we score the continuation given the (left-truncated) context.
- ``loglikelihood_rolling``: lm-eval's disjoint rolling windows of ``max_length``
  tokens, first one conditioned on ``prefix_token_id`` (BOS, else EOD).
- ``generate_until``: greedy (or sampled with ``do_sample``) decoding that stops at
  EOD, ``max_gen_toks`` or the first ``until`` string.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from megatron_detox.evaluate.perplexity import LogitsFn
from megatron_detox.tokenizers.base import Tokenizer

MODEL_NAME = "megatron-detox"
Request = tuple[tuple[str | None, str | None], list[int], list[int]]


@register_model(MODEL_NAME)
class MegatronDetoxLM(TemplateLM):
    def __init__(
        self,
        model: LogitsFn | None = None,
        tokenizer: Tokenizer | None = None,
        *,
        pretrained: str | None = None,
        tokenizer_path: str | None = None,
        max_length: int | None = None,
        batch_size: int | str | None = 1,
        device: str | None = "cpu",
        vocab_size: int | None = None,
        max_gen_toks: int = 256,
        seed: int = 1234,
        **_unused: Any,  # lm-eval passes max_batch_size etc. to every model class
    ) -> None:
        super().__init__()
        self._device = torch.device(device or "cpu")
        if model is None:
            if pretrained is None:
                raise ValueError("MegatronDetoxLM needs a model or pretrained=<model spec>")
            from megatron_detox.inference import load_for_inference

            loaded = load_for_inference(pretrained, tokenizer=tokenizer_path, device=self._device.type)
            self._device = loaded.device
            model, tokenizer, cfg = loaded.model, loaded.tokenizer, loaded.config
            vocab_size = vocab_size or cfg.vocab_size
            max_length = max_length or cfg.max_position_embeddings
        if tokenizer is None:
            raise ValueError("MegatronDetoxLM needs a tokenizer")
        config = getattr(model, "config", None)
        self.model = model
        self.tokenizer_ = tokenizer
        self.vocab_size = vocab_size or getattr(config, "vocab_size", None) or tokenizer.vocab_size
        context: int = getattr(config, "max_position_embeddings", 2048)
        self._max_length = int(max_length) if max_length else context
        # lm-eval passes "auto" for automatic batch sizing; we keep a fixed batch instead.
        self.batch_size = 1 if batch_size is None or batch_size == "auto" else int(str(batch_size))
        self.max_gen_toks = max_gen_toks
        self.seed = seed

    # ---------------------------------------------------------------- properties

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer_.eod)

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer_.bos
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer_.name)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer_.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer_.decode(tokens)

    # ---------------------------------------------------------------- scoring

    @torch.no_grad()
    def _logprobs(self, inputs: torch.Tensor) -> torch.Tensor:
        """``log_softmax`` of the logits ``[batch, seq, vocab]`` (Megatron padding rows dropped)."""
        logits = self.model(inputs.to(self._device))[..., : self.vocab_size]
        return F.log_softmax(logits.float(), dim=-1)

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """``(sum log p(continuation | context), continuation is the greedy choice)`` per request."""
        # The input is (context + continuation)[:-1], left-truncated to max_length; the
        # last len(continuation) logits predict the continuation.
        prepared = []
        for _, context, continuation in requests:
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            prepared.append((whole[:-1], list(continuation)))
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))
        batch_size = override_bs or self.batch_size
        results: list[tuple[float, bool]] = [(0.0, False)] * len(prepared)
        bar = tqdm(total=len(order), desc="loglikelihood", disable=disable_tqdm)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(prepared[i][0]) for i in chunk)
            inputs = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, i in enumerate(chunk):
                tokens = prepared[i][0]
                inputs[row, :len(tokens)] = torch.tensor(tokens)  # right padding: causal, so harmless
            logprobs = self._logprobs(inputs)  # [batch, width, vocab]
            for row, i in enumerate(chunk):
                tokens, continuation = prepared[i]
                end = len(tokens)
                rows = logprobs[row, end - len(continuation):end]  # [cont, vocab]
                target = torch.tensor(continuation, device=rows.device)
                total = float(rows.gather(-1, target[:, None]).sum())
                greedy = bool((rows.argmax(dim=-1) == target).all())
                results[i] = (total, greedy)
            bar.update(len(chunk))
        bar.close()
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows: list[Request] = []
        owners: list[int] = []
        for index, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1),
            ):
                windows.append(((None, None), context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ---------------------------------------------------------------- generation

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        generator = torch.Generator().manual_seed(self.seed)
        outputs = []
        for request in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, gen_kwargs = request.args
            outputs.append(self._generate_one(context, dict(gen_kwargs or {}), generator))
            self.cache_hook.add_partial("generate_until", request.args, outputs[-1])
        return outputs

    def _generate_one(self, context: str, gen_kwargs: dict[str, Any], generator: torch.Generator) -> str:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
        temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
        sample = bool(gen_kwargs.pop("do_sample", False)) and temperature > 0
        tokens = self.tok_encode(context) or [self.prefix_token_id]
        generated: list[int] = []
        text = ""
        # Recomputes the whole (left-truncated) context each step: works for any logits
        # callable; lm-eval generation tasks produce short answers.
        for _ in range(max_new):
            inputs = torch.tensor([(tokens + generated)[-self.max_length:]])
            logits = self._logprobs(inputs)[0, -1]  # [vocab]
            if sample:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                next_token = int(torch.multinomial(probs, 1, generator=generator))
            else:
                next_token = int(logits.argmax())
            if next_token == self.eot_token_id:
                break
            generated.append(next_token)
            text = self.tok_decode(generated)
            if any(stop in text for stop in until):
                break
        for stop in until:
            text = text.split(stop)[0]
        return text
