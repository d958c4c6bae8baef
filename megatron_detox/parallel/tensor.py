"""Tensor + sequence parallelism as DTensor plans (Megatron's column/row splits).

Per transformer block (Shoeybi et al. 2019; Korthikanti et al. 2022 for SP):

- ``q_proj``/``k_proj``/``v_proj``, ``gate_proj``/``up_proj``: column-parallel, so each
  rank computes ``heads/tp`` query heads and ``query_groups/tp`` key/value heads (the
  model infers heads from the local width) and ``ffn/tp`` MLP channels;
- ``o_proj``/``down_proj``: row-parallel; their partial sums are all-reduced (plain TP)
  or reduce-scattered along the sequence (SP);
- with SP the norms (and dropout/residuals) run on ``seq/tp`` tokens and each block
  input is all-gathered before the column-parallel projections.

The embedding is vocabulary-parallel (rows sharded, ``Shard(0)``) and the output layer
column-parallel on the same vocabulary dimension (``Shard(0)`` of its ``[vocab, hidden]``
weight), so a tied weight has one consistent sharding. Logits stay ``Shard(-1)`` and
the loss is computed under ``loss_parallel`` without gathering them.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from megatron_detox.models.gpt import Transformer, TransformerBlock
from megatron_detox.peft.parallel import peft_tp_plan


def _block_plan(block: TransformerBlock, sequence_parallel: bool) -> dict[str, ParallelStyle]:
    # Block inputs/outputs are plain local tensors: [b, s/tp, h] with SP, [b, s, h] without.
    act = Shard(1) if sequence_parallel else Replicate()
    plan: dict[str, ParallelStyle] = {
        "attention.q_proj": ColwiseParallel(),
        "attention.k_proj": ColwiseParallel(),
        "attention.v_proj": ColwiseParallel(),
        "attention.o_proj": RowwiseParallel(output_layouts=act),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(output_layouts=act),
    }
    if block.mlp.gate_proj is not None:
        plan["mlp.gate_proj"] = ColwiseParallel()
    if sequence_parallel:
        # Attention(x, rope, mask, cache, cache_pos) and MLP(x): all-gather x along the
        # sequence before the column-parallel projections (reduce-scatter in backward).
        plan.update({
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None, None, None),
                                            desired_input_layouts=(Replicate(), None, None, None, None)),
            "mlp_norm": SequenceParallel(),
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        })
    plan.update(peft_tp_plan(block, sequence_parallel))  # PEFT modules from peft.apply_peft, if any
    return plan


def apply_tensor_parallel(model: Transformer, tp_mesh: DeviceMesh, *, sequence_parallel: bool,
                          loss_parallel: bool = True) -> None:
    """Shard ``model`` (a full model or one pipeline stage, usually on meta) over ``tp_mesh``.

    With ``loss_parallel`` the output layer returns a vocabulary-sharded DTensor
    ``[b, s, vocab/tp]`` for :func:`megatron_detox.parallel.loss.token_loss_sum`.
    """
    act = Shard(1) if sequence_parallel else Replicate()
    top: dict[str, ParallelStyle] = {}
    if model.tok_embeddings is not None:
        top["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=act)
    if model.pos_embeddings is not None:
        # Position rows sharded too, so the sum word + position stays in the same [b, s/tp, h] layout.
        top["pos_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=act)
    if model.norm is not None and sequence_parallel:
        top["norm"] = SequenceParallel()
    if model.output is not None:
        top["output"] = ColwiseParallel(input_layouts=act,
                                        output_layouts=Shard(-1) if loss_parallel else Replicate(),
                                        use_local_output=not loss_parallel)
    if top:
        parallelize_module(model, tp_mesh, top)
    for block in model.layers.values():
        assert isinstance(block, TransformerBlock)
        parallelize_module(block, tp_mesh, _block_plan(block, sequence_parallel))
    model.tie_weights()  # output got its own DTensor; both are Shard(0) over the vocabulary


def apply_stage_boundaries(model: Transformer, tp_mesh: DeviceMesh, *, first: bool, last: bool) -> None:
    """With SP on a pipeline stage: exchange full ``[b, s, h]`` activations between stages.

    A stage computes positions (and RoPE) from its input's sequence length, so a
    non-first stage must receive the whole sequence; we gather at the end of a
    non-last stage and take this rank's sequence chunk at the start of a non-first
    stage (no communication: every TP rank holds the full activation).
    """
    blocks = list(model.layers.values())
    if not first:
        parallelize_module(blocks[0], tp_mesh, PrepareModuleInput(
            input_layouts=(Replicate(), None, None, None, None),
            desired_input_layouts=(Shard(1), None, None, None, None), use_local_output=True))
    if not last:
        parallelize_module(blocks[-1], tp_mesh, PrepareModuleOutput(
            output_layouts=Shard(1), desired_output_layouts=Replicate(), use_local_output=True))


def tp_sharded_modules(model: nn.Module) -> list[str]:
    """Names of modules whose parameters are DTensors (for logging/tests)."""
    from torch.distributed.tensor import DTensor

    return [name for name, module in model.named_modules()
            if any(isinstance(p, DTensor) for p in module.parameters(recurse=False))]
