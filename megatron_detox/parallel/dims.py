"""The parallel layout: how many ranks along each of the four dimensions.

``ParallelDims`` is a frozen value object validated against the model and the world
size before anything is allocated; ``build_mesh`` turns it into a named
``DeviceMesh`` that is passed explicitly to every ``apply_*`` function (no
module-level process groups).

Mesh dimension order is ``("pp", "dp_replicate", "dp_shard", "tp")``: TP innermost so
its heavy per-layer collectives stay inside a node (consecutive ranks), PP outermost
because its point-to-point traffic is the lightest.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from megatron_detox.config import ParallelConfig
from megatron_detox.errors import UserError
from megatron_detox.models.config import ModelConfig

MESH_DIM_NAMES: tuple[str, str, str, str] = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of each dimension; ``world_size`` is their product."""

    dp_replicate: int
    dp_shard: int
    tp: int
    pp: int
    virtual_stages: int
    world_size: int
    sequence_parallel: bool = False

    @classmethod
    def from_config(cls, parallel: ParallelConfig, model: ModelConfig, world_size: int) -> ParallelDims:
        """Resolve ``dp_shard=-1`` and validate; raise a one-line ``UserError`` if impossible."""
        for name in ("tp", "pp", "virtual_stages", "dp_replicate"):
            if getattr(parallel, name) < 1:
                raise UserError(f"parallel.{name}={getattr(parallel, name)}: must be >= 1")
        if world_size < 1:
            raise UserError(f"world size {world_size}: must be >= 1")
        fixed = parallel.tp * parallel.pp * parallel.dp_replicate
        dp_shard = parallel.dp_shard
        if dp_shard == -1:
            if world_size % fixed:
                raise UserError(
                    f"parallel: world size {world_size} is not divisible by tp*pp*dp_replicate="
                    f"{parallel.tp}*{parallel.pp}*{parallel.dp_replicate}={fixed}; change the layout "
                    f"or the number of processes")
            dp_shard = world_size // fixed
        elif dp_shard < 1:
            raise UserError(f"parallel.dp_shard={dp_shard}: must be >= 1, or -1 for the rest of the world")
        if fixed * dp_shard != world_size:
            raise UserError(
                f"parallel: dp_replicate*dp_shard*pp*tp = {parallel.dp_replicate}*{dp_shard}*{parallel.pp}*"
                f"{parallel.tp} = {fixed * dp_shard} but the world size is {world_size}; make them equal "
                f"(parallel.dp_shard=-1 takes the rest)")
        dims = cls(dp_replicate=parallel.dp_replicate, dp_shard=dp_shard, tp=parallel.tp, pp=parallel.pp,
                   virtual_stages=parallel.virtual_stages, world_size=world_size,
                   sequence_parallel=parallel.sequence_parallel)
        dims.validate_model(model, parallel)
        return dims

    def validate_model(self, model: ModelConfig, parallel: ParallelConfig) -> None:
        """Check that the model can be split this way (one line per problem, first one raised)."""
        tp = self.tp
        if model.num_attention_heads % tp:
            raise UserError(f"parallel.tp={tp}: does not divide model.num_attention_heads="
                            f"{model.num_attention_heads}; pick a tp that divides the heads")
        if model.kv_heads % tp:
            raise UserError(f"parallel.tp={tp}: does not divide the query groups (model.num_query_groups="
                            f"{model.kv_heads}); pick a tp that divides them")
        if model.ffn_size % tp:
            raise UserError(f"parallel.tp={tp}: does not divide model.ffn_hidden_size={model.ffn_size}")
        if model.padded_vocab_size % tp:
            raise UserError(f"parallel.tp={tp}: does not divide the padded vocabulary ({model.padded_vocab_size}); "
                            f"raise model.make_vocab_size_divisible_by")
        if self.sequence_parallel and tp == 1:
            raise UserError("parallel.sequence_parallel=true: needs parallel.tp > 1")
        if self.virtual_stages > 1 and self.pp == 1:
            raise UserError(f"parallel.virtual_stages={self.virtual_stages}: needs parallel.pp > 1")
        if self.virtual_stages > 1 and parallel.pp_schedule != "interleaved_1f1b":
            raise UserError(f"parallel.virtual_stages={self.virtual_stages}: needs "
                            f"parallel.pp_schedule=interleaved_1f1b")
        if parallel.pp_schedule == "interleaved_1f1b" and self.pp > 1 and self.virtual_stages < 2:
            raise UserError("parallel.pp_schedule=interleaved_1f1b: needs parallel.virtual_stages >= 2")
        stages = self.num_stages
        counts = parallel.pp_layers_per_stage
        if counts is not None:
            if len(counts) != stages or min(counts) < 1 or sum(counts) != model.num_layers:
                raise UserError(f"parallel.pp_layers_per_stage={counts}: needs {stages} positive entries "
                                f"(pp * virtual_stages) summing to model.num_layers={model.num_layers}")
        elif model.num_layers < stages:
            raise UserError(f"parallel.pp={self.pp}: model.num_layers={model.num_layers} is fewer than the "
                            f"{stages} pipeline stages (pp * virtual_stages); lower parallel.pp")

    def check_seq_length(self, seq_length: int) -> None:
        """Sequence parallelism splits every sequence into ``tp`` equal chunks."""
        if self.sequence_parallel and seq_length % self.tp:
            raise UserError(f"sequence length {seq_length}: must be a multiple of parallel.tp={self.tp} with "
                            f"parallel.sequence_parallel=true (set data.seq_length accordingly)")

    # ------------------------------------------------------------------ derived sizes

    @property
    def dp_size(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def num_stages(self) -> int:
        """Pipeline stages in total (``pp * virtual_stages``)."""
        return self.pp * self.virtual_stages

    @property
    def pp_enabled(self) -> bool:
        return self.pp > 1

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    @property
    def dp_enabled(self) -> bool:
        return self.dp_size > 1

    @property
    def fsdp_enabled(self) -> bool:
        return self.dp_shard > 1

    def describe(self) -> str:
        return (f"world {self.world_size} = pp {self.pp} x dp_replicate {self.dp_replicate} x dp_shard "
                f"{self.dp_shard} x tp {self.tp}" + (" (+sp)" if self.sequence_parallel else "")
                + (f", {self.virtual_stages} virtual stages" if self.virtual_stages > 1 else ""))

    # ------------------------------------------------------------------ mesh

    def build_mesh(self, device_type: str) -> DeviceMesh:
        """A 4-D mesh named ``("pp", "dp_replicate", "dp_shard", "tp")`` (size-1 dims kept)."""
        return init_device_mesh(device_type, (self.pp, self.dp_replicate, self.dp_shard, self.tp),
                                mesh_dim_names=MESH_DIM_NAMES)

    def dp_rank(self, mesh: DeviceMesh | None) -> int:
        """This rank's data-parallel index in ``[0, dp_size)``: which slice of the data it reads."""
        if mesh is None:
            return 0
        return mesh.get_local_rank("dp_replicate") * self.dp_shard + mesh.get_local_rank("dp_shard")

    def pp_rank(self, mesh: DeviceMesh | None) -> int:
        return 0 if mesh is None else mesh.get_local_rank("pp")

    def tp_rank(self, mesh: DeviceMesh | None) -> int:
        return 0 if mesh is None else mesh.get_local_rank("tp")

    def is_first_stage(self, mesh: DeviceMesh | None) -> bool:
        """Holds the embedding (with virtual stages, chunk 0 lives on pp rank 0)."""
        return self.pp_rank(mesh) == 0

    def is_last_stage(self, mesh: DeviceMesh | None) -> bool:
        """Holds the head and computes the loss (the last chunk lives on pp rank pp-1)."""
        return self.pp_rank(mesh) == self.pp - 1

    def stage_ids(self, mesh: DeviceMesh | None) -> list[int]:
        """Global stage indices held by this rank (loop assignment: rank r holds r, r+pp, ...)."""
        rank = self.pp_rank(mesh)
        return [rank + chunk * self.pp for chunk in range(self.virtual_stages)]
