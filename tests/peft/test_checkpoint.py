from __future__ import annotations

import json

import pytest
import torch
from peft_tiny import GPT, LLAMA, build

from megatron_detox import cli
from megatron_detox.config import AdapterConfig, PeftConfig, PrefixConfig
from megatron_detox.errors import UserError
from megatron_detox.peft.checkpoint import (
    load_peft_checkpoint,
    merge_peft_checkpoint,
    peft_metadata,
    read_peft_checkpoint,
    save_peft_checkpoint,
)
from megatron_detox.peft.surgery import apply_peft, peft_state_dict

PEFT = PeftConfig(adapter=AdapterConfig(bottleneck=4, init_std=0.05), prefix=PrefixConfig(length=3, hidden_size=8))


def trained(cfg, method, peft=PEFT):
    model = build(cfg)
    apply_peft(model, cfg, method, peft, seed=4)
    return model


def save(model, cfg, method, path, peft=PEFT):
    return save_peft_checkpoint(path, peft_state_dict(model), peft_metadata(cfg, method, peft))


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_roundtrip_onto_a_fresh_base_model(tiny_cfg, tokens, tmp_path, method):
    model = trained(tiny_cfg, method)
    save(model, tiny_cfg, method, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "peft.json").read_text())
    assert meta["base_model"]["name"] == tiny_cfg.name and meta["method"] == method
    assert set(meta["tensors"]) == set(peft_state_dict(model))
    fresh = build(tiny_cfg)  # no PEFT modules yet: the checkpoint's config is applied
    load_peft_checkpoint(fresh, tiny_cfg, tmp_path / "ckpt")
    assert torch.equal(fresh(tokens), model(tokens))
    assert not torch.equal(build(tiny_cfg)(tokens), model(tokens))


def test_checkpoint_holds_only_peft_tensors(tmp_path):
    model = trained(GPT, "adapter")
    save(model, GPT, "adapter", tmp_path / "ckpt")
    state, _ = read_peft_checkpoint(tmp_path / "ckpt")
    assert all("adapter" in name for name in state)
    assert sum(t.numel() for t in state.values()) == 2 * 2 * (2 * 32 * 4 + 4 + 32)


def test_another_base_model_is_a_one_line_user_error(tmp_path):
    save(trained(GPT, "adapter"), GPT, "adapter", tmp_path / "ckpt")
    with pytest.raises(UserError, match=r"peft.json: made for base model 'tiny-gpt' with hidden_size=32") as error:
        load_peft_checkpoint(build(GPT.replace(hidden_size=48)), GPT.replace(hidden_size=48), tmp_path / "ckpt")
    assert "\n" not in str(error.value)
    save(trained(LLAMA, "adapter"), LLAMA, "adapter", tmp_path / "llama")
    with pytest.raises(UserError, match="made for base model 'tiny-llama'"):
        load_peft_checkpoint(build(GPT), GPT, tmp_path / "llama")


def test_other_peft_shape_is_a_user_error(tmp_path):
    save(trained(GPT, "adapter"), GPT, "adapter", tmp_path / "ckpt")
    other = PeftConfig(adapter=AdapterConfig(bottleneck=8))
    with pytest.raises(UserError, match=r"'layers.0.attention_adapter.down.weight' has shape \[4, 32\], the model "
                                        r"expects \[8, 32\]"):
        load_peft_checkpoint(trained(GPT, "adapter", other), GPT, tmp_path / "ckpt")
    only_mlp = PeftConfig(adapter=AdapterConfig(bottleneck=4, placement="mlp"))
    with pytest.raises(UserError, match="unexpected tensor 'layers.0.attention_adapter"):
        load_peft_checkpoint(trained(GPT, "adapter", only_mlp), GPT, tmp_path / "ckpt")


def test_damaged_or_foreign_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="peft.json: not found"):
        load_peft_checkpoint(build(GPT), GPT, tmp_path)
    save(trained(GPT, "adapter"), GPT, "adapter", tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "peft.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(UserError, match="does not match weights_sha256"):
        load_peft_checkpoint(build(GPT), GPT, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "peft.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="not a megatron-detox PEFT checkpoint"):
        load_peft_checkpoint(build(GPT), GPT, tmp_path / "ckpt")


def test_hand_edited_metadata_is_a_user_error(tmp_path):
    save(trained(GPT, "adapter"), GPT, "adapter", tmp_path / "ckpt")
    meta_path = tmp_path / "ckpt" / "peft.json"
    meta = json.loads(meta_path.read_text())
    for key, value, message in [("base_model", "tiny-gpt", "field 'base_model' must be a JSON object, not str"),
                                ("peft", [4], "field 'peft' must be a JSON object, not list")]:
        meta_path.write_text(json.dumps(dict(meta, **{key: value})))
        with pytest.raises(UserError, match=message) as error:
            load_peft_checkpoint(build(GPT), GPT, tmp_path / "ckpt")
        assert "\n" not in str(error.value)


def test_a_tensor_outside_the_peft_modules_is_refused_not_dropped(tmp_path):
    model = trained(GPT, "adapter")
    state = dict(peft_state_dict(model), **{"output.weight": model.output.weight.detach().clone()})
    save_peft_checkpoint(tmp_path / "ckpt", state, peft_metadata(GPT, "adapter", PEFT))
    with pytest.raises(UserError, match="unexpected tensor 'output.weight'"):
        load_peft_checkpoint(build(GPT), GPT, tmp_path / "ckpt")


def test_merge_folds_the_prefix_mlp_into_static_kv(tiny_cfg, tokens, tmp_path):
    model = trained(tiny_cfg, "prefix")
    save(model, tiny_cfg, "prefix", tmp_path / "mlp")
    meta = merge_peft_checkpoint(tmp_path / "mlp", tmp_path / "static")
    assert meta["peft"]["reparameterize"] is False
    assert meta["num_parameters"] == tiny_cfg.num_layers * 2 * 3 * tiny_cfg.kv_heads * tiny_cfg.head_dim
    served = build(tiny_cfg)
    load_peft_checkpoint(served, tiny_cfg, tmp_path / "static")
    assert not served.layers["0"].attention.prefix.reparameterized
    torch.testing.assert_close(served(tokens), model(tokens), rtol=1e-6, atol=1e-6)


def test_cli_merge_and_its_errors(tmp_path, capsys):
    save(trained(GPT, "prefix"), GPT, "prefix", tmp_path / "mlp")
    assert cli.main(["peft", "merge", str(tmp_path / "mlp"), str(tmp_path / "static")]) == 0
    assert (tmp_path / "static" / "peft.safetensors").is_file()
    assert cli.main(["peft", "merge", str(tmp_path / "static"), str(tmp_path / "again")]) == 2
    save(trained(GPT, "adapter"), GPT, "adapter", tmp_path / "adapter")
    assert cli.main(["peft", "merge", str(tmp_path / "adapter"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already static" in err[0] and "adapters cannot be merged" in err[1]
    assert cli.main(["peft", "info", str(tmp_path / "static")]) == 0


def test_models_peft_table_reports_trainable_counts(capsys):
    from megatron_detox.config import PeftConfig as Defaults
    from megatron_detox.models.presets import get_preset
    from megatron_detox.peft.surgery import closed_form_trainable

    assert cli.main(["models", "--peft", "adapter", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    cfg = get_preset("gpt-530b")
    # 105 layers x 2 adapters x (2 * 20480 * 256 + 256 + 20480)
    assert rows["gpt-530b"]["trainable"] == 105 * 2 * (2 * 20480 * 256 + 256 + 20480)
    assert rows["gpt-530b"]["trainable"] == closed_form_trainable(cfg, "adapter", Defaults())
