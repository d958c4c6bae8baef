"""``build_parallel_model``: one plain model, any layout; ``ParallelModel`` runs its steps.

Order of application (as torchtitan): build on meta -> ``transform`` (PEFT surgery)
-> split into pipeline stages -> TP/SP -> activation checkpointing -> compile ->
FSDP2 / HSDP / replicate -> materialize -> layout-invariant init (or pretrained).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from megatron_detox.config import ParallelConfig
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.gpt import Transformer, output_detached
from megatron_detox.parallel.activation import apply_activation_checkpointing, apply_compile
from megatron_detox.parallel.data import PARAM_DTYPES, Precision, apply_data_parallel, dp_mesh_of, set_gradient_sync
from megatron_detox.parallel.env import DistEnv
from megatron_detox.parallel.fused_loss import fused_loss_applies, linear_cross_entropy_sum
from megatron_detox.parallel.loss import count_targets, local_value, masked_labels, token_loss_sum
from megatron_detox.parallel.norm import clip_grad_norm
from megatron_detox.parallel.pipeline import Schedule, build_schedule, split_into_stages
from megatron_detox.parallel.state import (
    InitialValues,
    gather_full_gradients,
    gather_full_state_dict,
    load_sharded_state_dict,
    materialize_and_init,
    sharded_state_dict,
)
from megatron_detox.parallel.tensor import apply_stage_boundaries, apply_tensor_parallel
from megatron_detox.parallel.tied import TiedEmbeddingSync


class ParallelModel:
    """This rank's model chunks plus everything needed to run a step on them."""

    def __init__(self, parts: list[Transformer], env: DistEnv, model_cfg: ModelConfig, *,
                 micro_batch_size: int, num_microbatches: int, precision: Precision,
                 schedule_factory: Callable[[ParallelModel], Schedule] | None,
                 tied_sync: TiedEmbeddingSync | None) -> None:
        self.parts: list[nn.Module] = list(parts)
        self.env = env
        self.config = model_cfg
        self.micro_batch_size = micro_batch_size
        self.num_microbatches = num_microbatches
        self.precision = precision
        self._tied_sync = tied_sync
        # Set per step before the schedule runs: the loss function reads them.
        self._loss_scale = 1.0
        self._loss_sum = torch.zeros((), dtype=torch.float64)
        self.schedule: Schedule | None = schedule_factory(self) if schedule_factory is not None else None

    # ------------------------------------------------------------------ parameters

    def parameters(self) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        seen: set[int] = set()
        for part in self.parts:
            for name, p in part.named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield name, p

    def train(self, mode: bool = True) -> None:
        for part in self.parts:
            part.train(mode)

    # ------------------------------------------------------------------ steps

    @property
    def _dims(self):  # noqa: ANN202 - ParallelDims, kept short for readability below
        return self.env.dims

    def _count_global_targets(self, labels: Tensor) -> Tensor:
        """Target tokens in the whole global batch; every TP/PP rank of a DP replica sees the same batch."""
        count = count_targets(labels).to(torch.float64)
        if self.env.mesh is not None:
            dist.all_reduce(count)
            count = count / (self._dims.tp * self._dims.pp)
        return count.clamp(min=1.0)

    def _loss_fn(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per micro-batch loss to differentiate: ``dp_size * sum(ce) / N_global``.

        The DP reduction averages gradients over ``dp_size`` replicas, so multiplying
        by it here makes the summed gradient the gradient of the global mean loss.
        """
        return token_loss_sum(logits, labels) * self._loss_scale

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if self._dims.tp_enabled:
            from torch.distributed.tensor.parallel import loss_parallel

            stack.enter_context(loss_parallel())  # the backward of the vocab-parallel loss needs it too
        if self.precision != "fp32" and not self._dims.dp_enabled:
            # FSDP's MixedPrecisionPolicy handles precision when DP is on; autocast otherwise.
            stack.enter_context(torch.autocast(self.env.device.type, dtype=PARAM_DTYPES[self.precision]))
        return stack

    def _finish_loss(self, count: Tensor) -> Tensor:
        """Global mean loss, the same on every rank: one sum per DP replica (last stage, TP rank 0)."""
        contribution = self._loss_sum.clone()
        if self.env.mesh is not None:
            dims, mesh = self._dims, self.env.mesh
            if not (dims.is_last_stage(mesh) and dims.tp_rank(mesh) == 0):
                contribution.zero_()
            dist.all_reduce(contribution)
        return (contribution / count).to(torch.float32)

    def _run(self, tokens: Tensor, labels: Tensor, loss_mask: Tensor | None, backward: bool) -> Tensor:
        labels = masked_labels(labels, loss_mask).to(self.env.device)
        tokens = tokens.to(self.env.device)
        if tokens.shape[0] % self.num_microbatches:
            raise ValueError(f"batch of {tokens.shape[0]} is not divisible into {self.num_microbatches} micro-batches")
        self._dims.check_seq_length(tokens.shape[1])  # before any collective: same on every rank
        count = self._count_global_targets(labels)
        self._loss_scale = float(self._dims.dp_size / count.item())
        self._loss_sum = torch.zeros((), dtype=torch.float64)
        grad_ctx = contextlib.nullcontext() if backward else torch.no_grad()
        with self._context(), grad_ctx:
            if self.schedule is not None:
                self._run_pipeline(tokens, labels, backward)
            else:
                self._run_accumulation(tokens, labels, backward)
        if backward and self._tied_sync is not None:
            self._tied_sync.all_reduce_grads(self.parts)
        return self._finish_loss(count)

    def _run_pipeline(self, tokens: Tensor, labels: Tensor, backward: bool) -> None:
        assert self.schedule is not None
        dims, mesh = self._dims, self.env.mesh
        args = (tokens,) if dims.is_first_stage(mesh) else ()
        target = labels if dims.is_last_stage(mesh) else None
        losses: list[Tensor] | None = [] if dims.is_last_stage(mesh) else None
        if backward:
            self.schedule.step(*args, target=target, losses=losses)
        else:
            self.schedule.eval(*args, target=target, losses=losses)
        # From the schedule's list, not from inside the loss function: the schedule may
        # also call the loss function on placeholder tensors while inferring shapes.
        for loss in losses or []:
            self._loss_sum += local_value(loss).to("cpu", torch.float64) / self._loss_scale

    def _run_accumulation(self, tokens: Tensor, labels: Tensor, backward: bool) -> None:
        (part,) = self.parts
        token_chunks = tokens.chunk(self.num_microbatches)
        label_chunks = labels.chunk(self.num_microbatches)
        last = len(token_chunks) - 1
        for i, (mb_tokens, mb_labels) in enumerate(zip(token_chunks, label_chunks, strict=True)):
            if backward:
                set_gradient_sync(self.parts, i == last)  # reduce gradients once, after the last micro-batch
            output = getattr(part, "output", None)
            if self.precision == "fp32" and fused_loss_applies(output):
                with output_detached(part):
                    hidden = part(mb_tokens)
                loss = linear_cross_entropy_sum(hidden, output, mb_labels) * self._loss_scale
            else:
                loss = self._loss_fn(part(mb_tokens), mb_labels)
            self._loss_sum += local_value(loss).to("cpu", torch.float64) / self._loss_scale
            if backward:
                loss.backward()

    def forward_backward(self, tokens: Tensor, labels: Tensor, loss_mask: Tensor | None = None) -> Tensor:
        """One step's forward and backward over this DP rank's share of the global batch.

        tokens, labels: ``[micro_batch_size * num_microbatches, seq]``; labels of -100 or
        ``loss_mask == 0`` carry no loss. Gradients accumulate into ``.grad`` (zero them
        between steps) and equal the gradient of the global mean token loss. Returns that
        mean loss (fp32 scalar, identical on every rank).
        """
        self.train(True)
        return self._run(tokens, labels, loss_mask, backward=True)

    @torch.no_grad()
    def evaluate_loss(self, tokens: Tensor, labels: Tensor, loss_mask: Tensor | None = None) -> Tensor:
        """Mean token loss without gradients (eval mode: no dropout). Same batch shape as training under PP."""
        self.train(False)
        try:
            return self._run(tokens, labels, loss_mask, backward=False)
        finally:
            self.train(True)

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """Clip to ``max_norm`` (0 only measures); returns the total norm before clipping."""
        skip = self._tied_sync.duplicate_params(self.parts) if self._tied_sync is not None else set()
        params = [p for p in self.parameters() if id(p) not in skip]
        return clip_grad_norm(params, max_norm, device=self.env.device, pp_group=self._pp_group,
                              also_scale=[p for p in self.parameters() if id(p) in skip])

    # ------------------------------------------------------------------ state

    @property
    def _pp_group(self) -> dist.ProcessGroup | None:
        return self.env.mesh["pp"].get_group() if self._dims.pp_enabled and self.env.mesh is not None else None

    def full_state_dict(self) -> dict[str, Tensor]:
        """Full fp32 CPU tensors with plain-model names (every rank receives them)."""
        return gather_full_state_dict(self.parts, self._pp_group)

    def full_gradients(self) -> dict[str, Tensor]:
        """Full fp32 CPU gradients by plain name, every rank (for tests and debugging)."""
        return gather_full_gradients(self.named_parameters(), self._pp_group)

    def model_state_dict(self) -> dict[str, Tensor]:
        """Sharded (DTensor) state dict for DCP save/load; resharded on load by DCP."""
        return sharded_state_dict(self.parts, self.config)

    def load_model_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        load_sharded_state_dict(self.parts, state_dict)


def build_parallel_model(model_cfg: ModelConfig, parallel: ParallelConfig, env: DistEnv, *, seed: int,
                         micro_batch_size: int, num_microbatches: int,
                         pretrained: Mapping[str, Tensor] | None = None,
                         transform: Callable[[nn.Module], None] | None = None,
                         precision: Precision = "fp32",
                         initial_values: InitialValues | None = None) -> ParallelModel:
    """Build this rank's share of the model for ``env.dims`` and initialize it.

    ``transform`` runs on the plain meta model before any parallelization (PEFT module
    surgery, freezing). ``initial_values(name, shape)`` may supply full initial values
    for parameters it adds (return None to use the seeded default).
    """
    dims, mesh = env.dims, env.mesh
    if num_microbatches < 1 or micro_batch_size < 1:
        raise UserError(f"micro_batch_size={micro_batch_size}, num_microbatches={num_microbatches}: must be >= 1")
    if dims.pp_enabled and num_microbatches < dims.pp:
        raise UserError(f"parallel.num_microbatches={num_microbatches}: a {dims.pp}-stage pipeline needs at least "
                        f"{dims.pp} micro-batches (raise train.global_batch_size or parallel.num_microbatches)")
    if dims.virtual_stages > 1 and num_microbatches % dims.pp:
        raise UserError(f"parallel.num_microbatches={num_microbatches}: interleaved 1F1B needs a multiple of "
                        f"parallel.pp={dims.pp}")
    with torch.device("meta"):
        model = Transformer(model_cfg)
    base_names = set(model.state_dict().keys())
    if transform is not None:
        transform(model)
    # SequenceParallel re-creates norm parameters with requires_grad=True; keep the freezing.
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}

    if dims.pp_enabled:
        assert mesh is not None
        parts, stage_ids = split_into_stages(model, dims, mesh, parallel.pp_layers_per_stage)
    else:
        parts, stage_ids = [model], [0]
    for part, stage_id in zip(parts, stage_ids, strict=True):
        first, last = stage_id == 0, stage_id == dims.num_stages - 1
        if dims.tp_enabled:
            assert mesh is not None
            apply_tensor_parallel(part, mesh["tp"], sequence_parallel=dims.sequence_parallel)
            if dims.sequence_parallel and dims.pp_enabled:
                apply_stage_boundaries(part, mesh["tp"], first=first, last=last)
            for name, p in part.named_parameters():
                p.requires_grad_(name not in frozen and p.requires_grad)
        apply_activation_checkpointing(part, parallel.activation_checkpointing)
        if parallel.compile:
            apply_compile(part)
        if dims.dp_enabled:
            assert mesh is not None
            # With PP each micro-batch would re-gather resharded parameters; keep them gathered.
            apply_data_parallel(part, dp_mesh_of(mesh, dims.dp_replicate), precision=precision,
                                cpu_offload=parallel.cpu_offload, reshard_after_forward=not dims.pp_enabled)
    for part in parts:
        materialize_and_init(part, model_cfg, env.device, seed=seed, distributed=mesh is not None,
                             pretrained=pretrained, base_names=base_names, initial_values=initial_values)

    tied_sync = TiedEmbeddingSync.build(dims, mesh) if (dims.pp_enabled and model_cfg.tie_word_embeddings) else None
    schedule_factory = None
    if dims.pp_enabled:
        assert mesh is not None

        def schedule_factory(pm: ParallelModel) -> Schedule:
            return build_schedule(pm.parts, stage_ids, dims, mesh, env.device, parallel.pp_schedule,
                                  num_microbatches, pm._loss_fn)

    return ParallelModel(parts, env, model_cfg, micro_batch_size=micro_batch_size,
                         num_microbatches=num_microbatches, precision=precision,
                         schedule_factory=schedule_factory, tied_sync=tied_sync)

