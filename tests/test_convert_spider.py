"""Spider trainables -> PyTorch state dict (PEFT LoRA names) -> back, exactly; LoRA orientation vs torch."""

import dataclasses
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from spider_fixtures import tiny_spider_config

from spider_jax.convert.llama import CheckpointMismatchError, save_hf_checkpoint
from spider_jax.convert.spider import WEIGHTS_FILE, export_trainables, import_trainables
from spider_jax.models.llama import LlamaForCausalLM
from spider_jax.models.spider import init_spider, llm_variables


def _random_variables(cfg, seed=0):
    variables = nn.unbox(init_spider(cfg, jax.random.PRNGKey(seed)))
    rng = np.random.default_rng(seed)  # LoRA B starts at zero: randomise everything so orientation matters
    return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), variables)


@pytest.mark.parametrize("scan", [False, True])
def test_round_trip_is_exact(tmp_path, scan):
    cfg = tiny_spider_config()
    cfg = dataclasses.replace(cfg, llm=cfg.llm.replace(scan_layers=scan))
    variables = _random_variables(cfg)
    export_trainables(cfg, variables, str(tmp_path))
    back = import_trainables(str(tmp_path), variables)
    for group in back:
        for a, b in zip(jax.tree.leaves(variables[group]), jax.tree.leaves(back[group]), strict=True):
            np.testing.assert_array_equal(a, b)
    state = load_file(os.path.join(tmp_path, WEIGHTS_FILE))
    assert state["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape == (4, 32)
    assert state["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].shape == (16, 4)
    assert state["new_tokens.embed_tokens"].shape == (20, 32) and state["new_tokens.lm_head"].shape == (20, 32)
    assert state["encoder_projectors.image.weight"].shape == (32, 24)
    assert state["controller.expert_0.layer_0.query.weight"].shape == (16, 16)
    assert state["controller.expert_0.layer_0.out.weight"].shape == (16, 16)
    assert os.path.exists(tmp_path / "adapter_config.json")


def test_exported_lora_applied_in_torch_gives_our_logits(tmp_path):
    """W' = W + (α/r)·B·A with the exported PEFT tensors, in transformers, equals our LoRA LLaMA."""
    import transformers

    cfg = tiny_spider_config()
    variables = _random_variables(cfg)
    variables["lora"] = jax.tree.map(lambda x: 0.05 * x, variables["lora"])
    llm = llm_variables(cfg, variables)
    save_hf_checkpoint(cfg.llm.replace(lora=None), llm["params"], str(tmp_path / "base"))
    export_trainables(cfg, variables, str(tmp_path / "trainables"))
    model = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32).eval()
    state = load_file(str(tmp_path / "trainables" / WEIGHTS_FILE))
    scale = cfg.llm.lora.alpha / cfg.llm.lora.rank
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, a in state.items():
            if name.endswith("lora_A.weight"):
                target = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                b = state[name.replace("lora_A", "lora_B")]
                modules[target].weight += scale * (b @ a)
    ids = np.random.default_rng(1).integers(0, cfg.llm.vocab_size, (2, 9))
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(LlamaForCausalLM(cfg.llm).apply(llm, ids))
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_import_names_missing_and_misshapen_tensors(tmp_path):
    cfg = tiny_spider_config()
    variables = _random_variables(cfg)
    export_trainables(cfg, variables, str(tmp_path))
    bigger = dataclasses.replace(cfg, encoder_width=30)
    like = nn.unbox(jax.eval_shape(lambda: init_spider(bigger, jax.random.PRNGKey(0))))
    with pytest.raises(CheckpointMismatchError, match="encoder_projectors.audio.weight"):
        import_trainables(str(tmp_path), like)
    with pytest.raises(FileNotFoundError, match="export_trainables"):
        import_trainables(str(tmp_path / "nowhere"), variables)
