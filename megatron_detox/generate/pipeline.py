"""Pipeline-parallel decoding: each rank runs its stage's layers with its own KV cache.

:class:`PipelineDecoder` has the call signature of ``Transformer`` so the engine runs
unchanged on every pipeline rank: the first stage embeds, each stage sends its
``[batch, seq, hidden]`` output to the next, and the last stage broadcasts the logits
of the last slot ``[batch, 1, vocab]`` to the whole pipeline group. Every rank then
samples the same token from the same per-sample generators, so all ranks agree on
the tokens and on which rows finished, with no further messages.

Simple and exact, not fast: stages run one after the other for one batch (no
micro-batch overlap), and the logits broadcast costs ``batch x vocab`` floats per step.
Called without a cache (perplexity) it returns, and broadcasts, the logits of every
position: ``batch x seq x vocab`` floats per window.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from megatron_detox.generate.projection import VocabProjection, output_detached
from megatron_detox.models.gpt import Transformer
from megatron_detox.models.kv_cache import KVCache


class PipelineDecoder:
    """One pipeline stage (``part``) behaving like the whole model for the engine."""

    output = None  # the engine's prefill then calls us directly; we return the last slot only

    def __init__(self, part: Transformer, group: dist.ProcessGroup, *, stage: int, num_stages: int) -> None:
        self.part = part
        self.group = group
        self.stage = stage
        self.num_stages = num_stages
        self.config = part.config
        self.projection = VocabProjection(part.output)

    @property
    def layers(self) -> nn.ModuleDict:
        return self.part.layers

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.part.parameters()

    # The stage's modules, so prefix tuning (``prefix_length``/``fill_prefix_cache``) sees its layers.
    def modules(self) -> Iterator[nn.Module]:
        return self.part.modules()

    def get_submodule(self, target: str) -> nn.Module:
        return self.part.get_submodule(target)

    def __call__(self, tokens: Tensor, positions: Tensor | None = None, mask: Tensor | None = None,
                 cache: KVCache | None = None, cache_pos: Tensor | None = None) -> Tensor:
        """tokens ``[batch, seq]`` (only its shape is used after stage 0) -> logits.

        With a KV cache (the engine): logits of the last slot ``[batch, 1, vocab]``.
        Without (perplexity, scoring): logits of every position ``[batch, seq, vocab]``.
        """
        batch, seq = tokens.shape[:2]
        param = next(self.part.parameters())
        if self.stage == 0:
            x = tokens
        else:
            x = torch.empty(batch, seq, self.config.hidden_size, dtype=param.dtype, device=param.device)
            dist.recv(x, group=self.group, group_src=self.stage - 1)
        last = self.stage == self.num_stages - 1
        every_position = cache is None
        if last and every_position:
            logits = self.part(x, positions, mask).contiguous()  # [batch, seq, padded_vocab]
        elif last:
            with output_detached(self.part):  # project only the last slot (prefill needs no more)
                hidden = self.part(x, positions, mask, cache, cache_pos)
            logits = self.projection(hidden[:, -1])[:, None].contiguous()  # [batch, 1, padded_vocab]
        else:
            dist.send(self.part(x, positions, mask, cache, cache_pos).contiguous(), group=self.group,
                      group_dst=self.stage + 1)
            logits = torch.empty(batch, seq if every_position else 1, self.config.padded_vocab_size,
                                 dtype=param.dtype, device=param.device)
        dist.broadcast(logits, group=self.group, group_src=self.num_stages - 1)
        return logits
