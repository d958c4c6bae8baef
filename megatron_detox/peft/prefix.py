"""Prefix tuning (Li & Liang 2021) as key/value injection into every attention layer.

Each layer gets P learned keys and values per key/value head (per query group with
GQA) that are prepended to the attention keys/values. They carry no position (no
RoPE rotation, no learned position embedding), which is right for both families.

Two parameterizations, both ``forward(batch) -> (k, v)`` each ``[batch, P, kv_heads, head_dim]``:
- static: ``key``/``value`` parameters ``[P, kv_heads, head_dim]`` (what inference uses);
- reparameterized (training only, as in the paper): ``embedding [P, m]`` through
  ``tanh(hidden(.))`` and two head-major projections ``key_proj``/``value_proj``
  ``[m] -> [kv_heads * head_dim]``. :func:`fold_prefix_state` turns it into the static form.

With tensor parallelism the head dimension is sharded like the attention's
(``key``/``value`` Shard(1); ``key_proj``/``value_proj`` column-parallel), so a rank's
prefix has its local heads. With a KV cache the prefix occupies the cache's first P
slots: :func:`fill_prefix_cache` writes them, and decoding then writes tokens at slot
``P + t`` with position ``t``.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import Tensor, nn

from megatron_detox.config import PrefixConfig
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig
from megatron_detox.models.init import parameter_seed
from megatron_detox.models.kv_cache import KVCache
from megatron_detox.peft.adapters import transformer_layers


def _local(t: Tensor) -> Tensor:
    # A tensor-parallel DTensor parameter -> this rank's heads; autograd flows through.
    return t.to_local() if hasattr(t, "to_local") else t


class PrefixKV(nn.Module):
    """P prefix keys/values for one layer; see the module docstring for the two forms."""

    def __init__(
        self,
        length: int,
        kv_heads: int,
        head_dim: int,
        reparam_hidden: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.length = length
        self.head_dim = head_dim
        self.reparameterized = reparam_hidden is not None
        factory = {"device": device, "dtype": dtype}
        if reparam_hidden is None:
            self.key = nn.Parameter(torch.empty(length, kv_heads, head_dim, **factory))  # type: ignore[arg-type]
            self.value = nn.Parameter(torch.empty(length, kv_heads, head_dim, **factory))  # type: ignore[arg-type]
        else:
            self.embedding = nn.Parameter(torch.empty(length, reparam_hidden, **factory))  # type: ignore[arg-type]
            self.hidden = nn.Linear(reparam_hidden, reparam_hidden, **factory)  # type: ignore[arg-type]
            self.key_proj = nn.Linear(reparam_hidden, kv_heads * head_dim, **factory)  # type: ignore[arg-type]
            self.value_proj = nn.Linear(reparam_hidden, kv_heads * head_dim, **factory)  # type: ignore[arg-type]

    def forward(self, batch_size: int) -> tuple[Tensor, Tensor]:
        if self.reparameterized:
            h = torch.tanh(self.hidden(self.embedding))  # [P, m]
            k, v = self.key_proj(h), self.value_proj(h)  # [P, kv_heads * head_dim] (local heads under TP)
            heads = k.shape[-1] // self.head_dim
            k, v = k.view(self.length, heads, self.head_dim), v.view(self.length, heads, self.head_dim)
        else:
            k, v = _local(self.key), _local(self.value)  # [P, kv_heads, head_dim]
        # expand() shares memory across the batch: no copy, gradients sum over the batch.
        return (k.unsqueeze(0).expand(batch_size, -1, -1, -1),  # [batch, P, kv_heads, head_dim]
                v.unsqueeze(0).expand(batch_size, -1, -1, -1))


def prefix_initial_value(name: str, shape: torch.Size, model_cfg: ModelConfig, seed: int) -> Tensor:
    """Initial full fp32 value of prefix parameter ``name`` (plain-model name), layout-invariant.

    The reparameterization input ``embedding`` is unit-scale; every matrix (and the static
    keys/values) gets the model's init std; biases are zero.
    """
    if name.endswith("bias"):
        return torch.zeros(shape)
    std = 1.0 if name.endswith("prefix.embedding") else model_cfg.init_method_std
    generator = torch.Generator().manual_seed(parameter_seed(seed, name))
    return torch.empty(shape).normal_(0.0, std, generator=generator)


def check_prefix_config(cfg: PrefixConfig) -> None:
    if cfg.length < 0:
        raise UserError(f"peft.prefix.length={cfg.length}: must be >= 0")
    if cfg.reparameterize and cfg.hidden_size < 1:
        raise UserError(f"peft.prefix.hidden_size={cfg.hidden_size}: must be >= 1 with peft.prefix.reparameterize")


def apply_prefix(model: nn.Module, model_cfg: ModelConfig, cfg: PrefixConfig, seed: int = 0) -> nn.Module:
    """Give every attention layer (of this pipeline stage) a :class:`PrefixKV`, in place."""
    check_prefix_config(cfg)
    for layer_id, block in transformer_layers(model).items():
        attention = block.attention
        if attention.prefix is not None:
            raise RuntimeError(f"layers.{layer_id}.attention already has a prefix")  # internal misuse
        reference = attention.k_proj.weight
        prefix = PrefixKV(
            cfg.length, model_cfg.kv_heads, model_cfg.head_dim,
            reparam_hidden=cfg.hidden_size if cfg.reparameterize else None,
            device=reference.device, dtype=reference.dtype,
        )
        if reference.device.type != "meta":  # on meta: build_parallel_model's initial_values fills it
            with torch.no_grad():
                for name, param in prefix.named_parameters():
                    full_name = f"layers.{layer_id}.attention.prefix.{name}"
                    param.copy_(prefix_initial_value(full_name, param.shape, model_cfg, seed))
        attention.prefix = prefix
    return model


def prefix_num_params(model_cfg: ModelConfig, cfg: PrefixConfig) -> int:
    """Closed form. Static: ``2 P kv d`` per layer; reparameterized:
    ``P m + (m m + m) + 2 (m kv d + kv d)`` per layer (embedding, hidden, key/value projections)."""
    p, kvd = cfg.length, model_cfg.kv_heads * model_cfg.head_dim
    if not cfg.reparameterize:
        per_layer = 2 * p * kvd
    else:
        m = cfg.hidden_size
        per_layer = p * m + (m * m + m) + 2 * (m * kvd + kvd)
    return model_cfg.num_layers * per_layer


def prefix_length(model: nn.Module) -> int:
    """P of the model's prefixes (0 without prefix tuning); every layer has the same P."""
    for module in model.modules():
        if isinstance(module, PrefixKV):
            return module.length
    return 0


@torch.no_grad()
def fill_prefix_cache(model: nn.Module, cache: KVCache) -> int:
    """Write each layer's prefix keys/values into cache slots ``[0, P)``; return P.

    The generation engine then writes token ``t`` of the sequence at slot ``P + t`` with
    position ``t`` (``model(tokens, positions=t, cache=cache, cache_pos=P + t)``); the
    default causal mask over slots keeps the prefix visible to every token.
    """
    length = prefix_length(model)
    if length == 0:
        return 0
    if length >= cache.max_len:
        raise UserError(f"peft.prefix.length={length} leaves no room in a KV cache of {cache.max_len} slots; "
                        "use a longer cache (max_len) or a shorter prefix")
    for block in transformer_layers(model).values():
        prefix = block.attention.prefix
        if prefix is None or block.attention.layer_id not in cache.keys:
            continue
        k, v = prefix(cache.batch_size)  # [batch, P, kv_heads, head_dim]
        slots = torch.arange(length, device=cache.keys[block.attention.layer_id].device)
        cache.update(block.attention.layer_id, slots, k, v)
    return length


def fold_prefix_state(state: dict[str, Tensor], kv_heads: int, head_dim: int) -> dict[str, Tensor]:
    """Reparameterized prefix tensors -> static ``key``/``value`` ``[P, kv_heads, head_dim]``.

    Runs the computation of :meth:`PrefixKV.forward` on plain tensors in fp32; tensors
    that are not reparameterized prefix parts are kept unchanged.
    """
    linear = torch.nn.functional.linear
    prefixes = sorted({name[: -len(".embedding")] for name in state if name.endswith(".prefix.embedding")})
    parts = ("embedding", "hidden.weight", "hidden.bias", "key_proj.weight", "key_proj.bias",
             "value_proj.weight", "value_proj.bias")
    folded = {f"{p}.{part}" for p in prefixes for part in parts}
    out = {name: tensor for name, tensor in state.items() if name not in folded}
    for p in prefixes:
        t = {part: state[f"{p}.{part}"].float() for part in parts}
        h = torch.tanh(linear(t["embedding"], t["hidden.weight"], t["hidden.bias"]))  # [P, m]
        for part in ("key", "value"):
            kv = linear(h, t[f"{part}_proj.weight"], t[f"{part}_proj.bias"])  # [P, kv_heads * head_dim]
            out[f"{p}.{part}"] = kv.view(h.shape[0], kv_heads, head_dim).contiguous()
    return out


@torch.no_grad()
def init_prefix_from_tokens(model: nn.Module, model_cfg: ModelConfig, token_ids: Tensor) -> None:
    """Li & Liang's real-word initialization: the prefix starts as the model's own keys/values
    of ``token_ids`` ([P]) at positions ``0..P-1``, so training starts from the base model
    conditioned on that text rather than from a random perturbation of it.

    A plain (single-process) model with :class:`PrefixKV` modules. Static prefixes get the
    keys/values directly; a reparameterized prefix gets ``key_proj``/``value_proj`` solved
    (minimum-norm least squares) so that its MLP outputs them exactly when ``m + 1 >= P``.
    """
    blocks = list(transformer_layers(model).values())
    prefixes = [cast(PrefixKV, block.attention.prefix) for block in blocks]
    length = prefix_length(model)
    if token_ids.ndim != 1 or token_ids.shape[0] != length:
        raise UserError(f"prefix initialization text has {token_ids.numel()} tokens; peft.prefix.length={length} "
                        "needs exactly that many (pad or cut the text)")
    reference = blocks[0].attention.k_proj.weight
    cache = KVCache([b.attention.layer_id for b in blocks], 1, length, model_cfg.kv_heads, model_cfg.head_dim,
                    dtype=reference.dtype, device=reference.device)
    was_training = model.training
    try:
        for block in blocks:
            block.attention.prefix = None  # the base model's own keys/values of the text
        model.eval()
        model(token_ids[None].to(reference.device), cache=cache, cache_pos=torch.arange(length, device=reference.device))
    finally:
        for block, prefix in zip(blocks, prefixes, strict=True):
            block.attention.prefix = prefix
        model.train(was_training)
    for block, prefix in zip(blocks, prefixes, strict=True):
        layer_id = block.attention.layer_id
        # [P, kv_heads, head_dim] (the cache is head-major)
        targets = {"key": cache.keys[layer_id][0].transpose(0, 1), "value": cache.values[layer_id][0].transpose(0, 1)}
        if not prefix.reparameterized:
            for part, target in targets.items():
                getattr(prefix, part).copy_(target)
            continue
        h = torch.tanh(prefix.hidden(prefix.embedding)).float()  # [P, m]
        design = torch.cat([h, h.new_ones(length, 1)], dim=1)  # [P, m + 1]: weight and bias together
        pinv = torch.linalg.pinv(design)  # [m + 1, P]
        for part, target in targets.items():
            solution = pinv @ target.reshape(length, -1).float()  # [m + 1, kv_heads * head_dim]
            proj = getattr(prefix, f"{part}_proj")
            proj.weight.copy_(solution[:-1].T)
            proj.bias.copy_(solution[-1])


def prefix_init_tokens(token_ids: list[int], length: int) -> Tensor:
    """Initialization text tokens repeated or cut to exactly ``length`` ([P])."""
    if not token_ids:
        raise UserError("prefix initialization text has no tokens; give a non-empty text")
    repeats = -(-length // len(token_ids))
    return torch.tensor((token_ids * repeats)[:length], dtype=torch.long)


def prefix_state_from_tokens(base_model: nn.Module, model_cfg: ModelConfig, cfg: PrefixConfig, token_ids: Tensor,
                             seed: int = 0) -> dict[str, Tensor]:
    """Full prefix tensors initialized from real text, for ``peft_initial_values(overrides=...)``.

    Runs on a plain copy of ``base_model`` (left untouched), so a parallel run can compute
    them once on CPU from the pretrained weights and hand them to ``build_parallel_model``.
    """
    model = copy.deepcopy(base_model)
    apply_prefix(model, model_cfg, cfg, seed=seed)
    init_prefix_from_tokens(model, model_cfg, token_ids)
    return {name: param.detach().clone() for name, param in model.named_parameters() if ".attention.prefix." in name}
