"""Tensor-parallel plan pieces for PEFT modules (used by ``parallel.tensor``).

- Prefix KV: split by key/value head exactly like ``k_proj``/``v_proj`` (column
  parallel): static ``key``/``value`` ``[P, kv_heads, head_dim]`` are ``Shard(1)``, the
  reparameterization's ``key_proj``/``value_proj`` are ``ColwiseParallel`` (head-major
  output rows, so contiguous chunks are whole heads). The reparameterization input
  (``embedding``, ``hidden``) stays replicated; ColwiseParallel all-reduces its gradient.
- Adapters: replicated (they see the full hidden size; r is small, so splitting would
  only add two collectives per adapter). Without sequence parallelism every TP rank
  sees the same full activations and computes identical gradients, so the parameters
  stay plain tensors. With SP each rank sees ``seq/tp`` tokens: the parameters become
  ``Replicate`` DTensors with ``Shard(1)`` inputs, so DTensor sums their gradients
  over the TP group (as for the norms).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle

from megatron_detox.peft.adapters import BottleneckAdapter
from megatron_detox.peft.prefix import PrefixKV


def _distribute_direct_params(module: nn.Module, mesh: DeviceMesh, placements: list[Placement]) -> None:
    # Only the module's own parameters; keep requires_grad (the base is frozen, PEFT is not).
    for name, param in list(module.named_parameters(recurse=False)):
        if isinstance(param, DTensor):
            continue
        module.register_parameter(name, nn.Parameter(distribute_tensor(param.data, mesh, placements),
                                                     requires_grad=param.requires_grad))


class PrefixHeadParallel(ParallelStyle):
    """Static prefix ``key``/``value`` ``[P, kv_heads, head_dim]`` sharded on the head dim."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(
            module, device_mesh, lambda _name, mod, mesh: _distribute_direct_params(mod, mesh, [Shard(1)]))


class SequenceParallelAdapter(ParallelStyle):
    """Adapter on ``[batch, seq/tp, hidden]`` shards with replicated (gradient-summed) parameters."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def partition(_name: str, mod: nn.Module, mesh: DeviceMesh) -> None:
            _distribute_direct_params(mod, mesh, [Replicate()])

        def prepare_input(mod: nn.Module, inputs: tuple[Tensor, ...], mesh: DeviceMesh) -> tuple[Tensor, ...]:
            (y,) = inputs  # local [batch, seq/tp, hidden]
            return (y if isinstance(y, DTensor) else DTensor.from_local(y, mesh, [Shard(1)], run_check=False),)

        def prepare_output(mod: nn.Module, output: Tensor, mesh: DeviceMesh) -> Tensor:
            return output.to_local() if isinstance(output, DTensor) else output

        # torch annotates input_fn/output_fn as returning None, but uses their results.
        return distribute_module(module, device_mesh, partition, prepare_input, prepare_output)  # type: ignore[arg-type]


def peft_tp_plan(block: nn.Module, sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """Plan entries (relative to a ``TransformerBlock``) for the PEFT modules it holds."""
    plan: dict[str, ParallelStyle] = {}
    prefix = getattr(block.attention, "prefix", None)
    if isinstance(prefix, PrefixKV):
        if prefix.reparameterized:
            plan["attention.prefix.key_proj"] = ColwiseParallel()
            plan["attention.prefix.value_proj"] = ColwiseParallel()
        else:
            plan["attention.prefix"] = PrefixHeadParallel()
    if sequence_parallel:
        for seam in ("attention_adapter", "mlp_adapter"):
            if isinstance(getattr(block, seam), BottleneckAdapter):
                plan[seam] = SequenceParallelAdapter()
    return plan
