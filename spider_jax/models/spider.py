"""Spider: encoder projectors -> LoRA LLaMA -> M-Prompt hidden states -> Decoders-Controller (paper Fig. 2).

Variables are one dict of named groups, so each training stage can pick its trainables by name
(:data:`GROUPS`) and the rest stays frozen:

* ``llm``: the LLaMA base parameters (frozen in every stage);
* ``lora``: LoRA adapters of the LLM;
* ``new_tokens``: the input-embedding rows (and LM-head columns, unless tied) of the tokens added for the
  template. They are trained on their own so the 32000-row tables need no optimizer state; the forward pass
  writes them over the base table's last rows;
* ``projectors``: encoder projectors (ImageBind -> LLM width);
* ``controller``: UDP experts, router, M-Queries, TM-Fusion and reconstruction heads.

The batch (host numpy or device arrays, leading batch axis B) holds the input-pipeline fields (``input_ids``,
``attention_mask``, ``labels``, ``segment_ids``, ``positions``, ``input_positions``, ``input_modality``) plus the
embeddings looked up from the stores: ``input_embeddings`` (B, I, E) and, for every controller output modality X
(lower-case ``x``), ``{x}_positions`` (B, G), ``{x}_te`` (B, G, T, D_X), ``{x}_te_found`` (B, G),
``{x}_target`` (B, G, E) and ``{x}_target_found`` (B, G).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spider_jax import losses
from spider_jax.models.controller import ControllerConfig, DecodersController, init_controller
from spider_jax.models.llama import LlamaConfig, LlamaForCausalLM
from spider_jax.models.lora import LORA_COLLECTION
from spider_jax.models.projectors import EncoderProjectors, gather, splice

GROUPS = ("llm", "lora", "new_tokens", "projectors", "controller")


@dataclasses.dataclass(frozen=True)
class SpiderConfig:
    llm: LlamaConfig
    controller: ControllerConfig
    base_vocab_size: int  # rows of the base tokenizer; rows from here on are the template's added tokens
    encoder_width: int = 1024  # ImageBind
    shared_projector: bool = False  # the public reference code's single projector for all modalities
    add_input_embedding: bool = True  # M_e = hidden state + the M-Prompt token's input embedding (NExT-GPT)
    mprompt_layer: int = -1  # which hidden state is M_e, numbered as HF output_hidden_states (-1: final)
    lm_weight: float = 1.0
    alignment_weight: float = 1.0
    reconstruction_weight: float = 1.0

    def __post_init__(self):
        if not 0 < self.base_vocab_size <= self.llm.vocab_size:
            raise ValueError(f"base_vocab_size {self.base_vocab_size} must be in (0, {self.llm.vocab_size}]")
        if self.controller.llm_width != self.llm.hidden_size:
            raise ValueError(
                f"controller.llm_width {self.controller.llm_width} != LLM hidden_size {self.llm.hidden_size}"
            )

    @property
    def num_new_tokens(self) -> int:
        return self.llm.vocab_size - self.base_vocab_size

    @property
    def output_modalities(self) -> tuple[str, ...]:
        return tuple(self.controller.outputs)


def init_spider(cfg: SpiderConfig, rng: jax.Array, llm_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Boxed variables (``nn.LogicallyPartitioned`` leaves; ``nn.unbox`` for arrays) of every group.

    ``llm_params``: converted base weights (already resized to ``llm.vocab_size``); random when None.
    """
    keys = jax.random.split(rng, 4)
    # Boxed (not init_params' plain arrays): the logical names decide how the 7B base is sharded.
    llm_vars = dict(jax.jit(LlamaForCausalLM(cfg.llm).init)(keys[0], jnp.zeros((1, 2), jnp.int32)))
    if llm_params is not None:
        llm_vars = dict(llm_vars)
        llm_vars["params"] = jax.tree.map(
            lambda box, value: (
                box.replace_boxed(jnp.asarray(value)) if isinstance(box, nn.LogicallyPartitioned) else value
            ),
            llm_vars["params"],
            dict(llm_params),
            is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
        )
    base = nn.unbox(llm_vars["params"])
    new_tokens = {
        "embed": nn.LogicallyPartitioned(base["model"]["embed_tokens"][cfg.base_vocab_size :], (None, "embed"))
    }
    if not cfg.llm.tie_word_embeddings:
        new_tokens["head"] = nn.LogicallyPartitioned(base["lm_head"][:, cfg.base_vocab_size :], ("embed", None))
    projector = EncoderProjectors(cfg.llm.hidden_size, cfg.shared_projector, cfg.llm.dtype)
    projectors = projector.init(
        keys[1], jnp.zeros((1, 1, cfg.encoder_width), jnp.float32), jnp.ones((1, 1), jnp.int32)
    )["params"]
    return {
        "llm": llm_vars["params"],
        "lora": llm_vars.get(LORA_COLLECTION, {}),
        "new_tokens": new_tokens,
        "projectors": projectors,
        "controller": init_controller(cfg.controller, keys[2]),
    }


def with_new_token_rows(cfg: SpiderConfig, llm: Mapping[str, Any], new_tokens: Mapping[str, Any]) -> dict[str, Any]:
    """The LLM params with the trainable rows of the added tokens written over the table's last rows."""
    if cfg.num_new_tokens == 0:
        return dict(llm)
    model = dict(llm["model"])
    table = model["embed_tokens"]
    model["embed_tokens"] = jax.lax.dynamic_update_slice(
        table, new_tokens["embed"].astype(table.dtype), (cfg.base_vocab_size, 0)
    )
    out = dict(llm)
    out["model"] = model
    if "head" in new_tokens:
        head = llm["lm_head"]
        out["lm_head"] = jax.lax.dynamic_update_slice(
            head, new_tokens["head"].astype(head.dtype), (0, cfg.base_vocab_size)
        )
    return out


def llm_variables(cfg: SpiderConfig, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Flax variables of the LLM alone (base + trained token rows + LoRA), e.g. for KV-cache decoding."""
    out = {"params": with_new_token_rows(cfg, variables["llm"], variables["new_tokens"])}
    if variables.get("lora"):
        out[LORA_COLLECTION] = variables["lora"]
    return out


def input_embeddings(cfg: SpiderConfig, variables: Mapping[str, Any], batch: Mapping[str, jax.Array]) -> jax.Array:
    """Token embeddings with the projected encoder embeddings spliced in at the ``<E^X>`` slots (B, L, D)."""
    llm_vars = llm_variables(cfg, variables)
    token_embeddings = LlamaForCausalLM(cfg.llm).apply(llm_vars, batch["input_ids"], method=LlamaForCausalLM.embed)
    if "input_embeddings" not in batch:
        return token_embeddings
    projected = EncoderProjectors(cfg.llm.hidden_size, cfg.shared_projector, cfg.llm.dtype).apply(
        {"params": variables["projectors"]}, batch["input_embeddings"], batch["input_modality"]
    )
    return splice(token_embeddings, batch["input_positions"], projected)


def spider_forward(
    cfg: SpiderConfig,
    variables: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    deterministic: bool = True,
    rng: jax.Array | None = None,
) -> dict[str, Any]:
    """Logits (B, L, V) and, per output modality, the controller outputs for the batch's M-Prompt groups."""
    llm_model = LlamaForCausalLM(cfg.llm)
    llm_vars = llm_variables(cfg, variables)
    inputs_embeds = input_embeddings(cfg, variables, batch)
    rngs = {"dropout": rng} if rng is not None and not deterministic else None
    logits, hidden = llm_model.apply(
        llm_vars,
        None,
        attention_mask=batch["attention_mask"],
        position_ids=batch.get("positions"),
        inputs_embeds=inputs_embeds,
        segment_ids=batch.get("segment_ids"),
        deterministic=deterministic,
        return_hidden=True,
        hidden_layer=cfg.mprompt_layer,
        rngs=rngs,
    )
    controller = DecodersController(cfg.controller)
    outputs = {}
    for modality in cfg.output_modalities:
        x = modality.lower()
        if f"{x}_positions" not in batch:
            continue
        positions = batch[f"{x}_positions"]
        m_prompt = gather(hidden, positions)
        if cfg.add_input_embedding:
            m_prompt = m_prompt + gather(inputs_embeds, positions).astype(m_prompt.dtype)
        outputs[modality] = controller.apply(
            {"params": variables["controller"]}, m_prompt.astype(jnp.float32), batch[f"{x}_te"], modality
        )
    return {"logits": logits, "controller": outputs}


def spider_loss(
    cfg: SpiderConfig,
    variables: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    deterministic: bool = True,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of CE, M-Alignment and M-Reconstruction (module docstring of ``losses``) and metrics."""
    out = spider_forward(cfg, variables, batch, deterministic, rng)
    ce, tokens = losses.next_token_loss(out["logits"], batch["labels"])
    metrics = {"lm_loss": ce, "tokens": tokens}
    align_sum = align_count = recon_sum = recon_count = jnp.zeros((), jnp.float32)
    for modality, o in out["controller"].items():
        x = modality.lower()
        valid = (batch[f"{x}_positions"] >= 0) & batch[f"{x}_te_found"]
        a, n = losses.m_alignment(o["s"], batch[f"{x}_te"], valid)
        align_sum, align_count = align_sum + a * n, align_count + n
        metrics[f"alignment_{x}"] = a
        if "reconstruction" in o and f"{x}_target" in batch:
            valid = (batch[f"{x}_positions"] >= 0) & batch[f"{x}_target_found"]
            r, n = losses.m_reconstruction(o["reconstruction"], batch[f"{x}_target"], valid)
            recon_sum, recon_count = recon_sum + r * n, recon_count + n
            metrics[f"reconstruction_{x}"] = r
    alignment = align_sum / jnp.maximum(align_count, 1.0)
    reconstruction = recon_sum / jnp.maximum(recon_count, 1.0)
    total = cfg.lm_weight * ce + cfg.alignment_weight * alignment + cfg.reconstruction_weight * reconstruction
    metrics.update(
        loss=total,
        alignment_loss=alignment,
        reconstruction_loss=reconstruction,
        alignment_groups=align_count,
        reconstruction_groups=recon_count,
    )
    return total, metrics
