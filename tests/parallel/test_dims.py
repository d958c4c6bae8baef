"""Layout validation: impossible layouts are refused with one line, before any allocation."""

from __future__ import annotations

import pytest

from megatron_detox.config import ParallelConfig
from megatron_detox.errors import UserError
from megatron_detox.models import ModelConfig
from megatron_detox.parallel import ParallelDims

GPT = ModelConfig(num_layers=4, hidden_size=48, num_attention_heads=6, vocab_size=100,
                  make_vocab_size_divisible_by=64)
LLAMA = ModelConfig(num_layers=4, hidden_size=64, num_attention_heads=8, num_query_groups=2, vocab_size=100,
                    make_vocab_size_divisible_by=64, position_embedding="rope", normalization="rmsnorm",
                    activation="swiglu", add_bias_linear=False)


def test_dp_shard_takes_the_rest_of_the_world() -> None:
    dims = ParallelDims.from_config(ParallelConfig(tp=2, pp=2), GPT, world_size=16)
    assert (dims.pp, dims.dp_replicate, dims.dp_shard, dims.tp) == (2, 1, 4, 2)
    assert dims.dp_size == 4 and dims.num_stages == 2 and dims.fsdp_enabled


def test_explicit_layout_and_stage_ids() -> None:
    dims = ParallelDims.from_config(
        ParallelConfig(pp=2, virtual_stages=2, pp_schedule="interleaved_1f1b", dp_replicate=2, dp_shard=1),
        GPT, world_size=4)
    assert dims.num_stages == 4 and dims.dp_size == 2 and not dims.fsdp_enabled
    assert dims.stage_ids(None) == [0, 2]  # pp rank 0 holds stages 0 and 2 (loop placement)


@pytest.mark.parametrize(("parallel", "model", "world", "message"), [
    (ParallelConfig(tp=4), GPT, 4, "does not divide model.num_attention_heads=6"),
    (ParallelConfig(tp=4), LLAMA, 4, "does not divide the query groups"),
    (ParallelConfig(pp=8), GPT, 8, "model.num_layers=4 is fewer than the 8 pipeline stages"),
    (ParallelConfig(pp=2, virtual_stages=4, pp_schedule="interleaved_1f1b"), GPT, 2, "fewer than the 8"),
    (ParallelConfig(tp=2, dp_shard=2), GPT, 8, "but the world size is 8"),
    (ParallelConfig(tp=3), GPT, 4, "world size 4 is not divisible by tp*pp*dp_replicate"),
    (ParallelConfig(pp=2, pp_layers_per_stage=[1, 2]), GPT, 2, "summing to model.num_layers=4"),
    (ParallelConfig(sequence_parallel=True), GPT, 1, "needs parallel.tp > 1"),
    (ParallelConfig(virtual_stages=2, pp_schedule="interleaved_1f1b"), GPT, 1, "needs parallel.pp > 1"),
])
def test_impossible_layouts_are_refused_in_one_line(parallel: ParallelConfig, model: ModelConfig, world: int,
                                                     message: str) -> None:
    with pytest.raises(UserError) as error:
        ParallelDims.from_config(parallel, model, world)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_single_process_layout() -> None:
    dims = ParallelDims.from_config(ParallelConfig(), GPT, world_size=1)
    assert dims.world_size == 1 and dims.dp_rank(None) == 0
    assert dims.is_first_stage(None) and dims.is_last_stage(None)


@pytest.mark.parametrize("override", ["parallel.tp=2", "parallel.pp=2"])
def test_tiny_config_loads_and_fits_two_ranks(override: str) -> None:
    from megatron_detox.config import load_config
    from tests.conftest import REPO

    cfg = load_config(REPO / "configs" / "train" / "tiny.yaml", [override])
    dims = ParallelDims.from_config(cfg.parallel, cfg.model.to_model_config(), world_size=2)
    assert dims.tp * dims.pp == 2 and dims.dp_size == 1


def test_sequence_parallel_needs_a_sequence_divisible_by_tp() -> None:
    # Uneven sequence chunks make the TP ranks' collectives disagree (gloo aborts, NCCL hangs):
    # refused at config load and again by ParallelModel before its first collective.
    from megatron_detox.config import ConfigError, load_config
    from tests.conftest import REPO

    tiny = REPO / "configs" / "train" / "tiny.yaml"
    with pytest.raises(ConfigError, match=r"data.seq_length=63: must be a multiple of parallel.tp=2"):
        load_config(tiny, ["parallel.tp=2", "parallel.sequence_parallel=true", "data.seq_length=63"])
    load_config(tiny, ["parallel.tp=2", "data.seq_length=63"])  # fine without SP
    dims = ParallelDims.from_config(ParallelConfig(tp=2, sequence_parallel=True), GPT, world_size=2)
    with pytest.raises(UserError, match="sequence length 15: must be a multiple of parallel.tp=2"):
        dims.check_seq_length(15)
    dims.check_seq_length(16)
