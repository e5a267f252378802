"""Decoders-Controller: Unified Decoder Projector (UDP) and TM-Fusion (paper §2.2, Fig. 3).

For an answer group of output modality X, the LLM's hidden state at the group's M-Prompt token, M_e^X, drives
the controller:

* K **projection experts** f_P^k, each a small pre-norm transformer over ``concat(Q^X, Linear(M_e^X))``, where
  Q^X are the learnable **M-Queries** of modality X (N^X tokens); the expert's output is the query positions;
* a **router** MLP on M_e^X gives softmax weights w^X over the experts; Q̄^X = Σ_k w_k f_P^k(Q^X, M_e^X);
* **TM-Fusion**: S^X = T_e^X + α · f_L^X(Q̄^X), with T_e^X the decoder's own text encoding of the group's
  T-Prompt and f_L^X a linear map to the decoder's conditioning width (N^X = 1 broadcasts over T_e's tokens);
* for the M-Reconstruction loss, f_R^X maps the token-mean of Q̄^X to the encoder (ImageBind) width.

Experts and router are shared by all modalities (that is what makes the projector *unified*); M-Queries, f_L and
f_R are per modality. The paper's ablations are config variants: ``mp`` (one expert stack per modality, no
router), ``mprompt_only`` (S = f_L(Q̄), the NExT-GPT / Spider-base style), ``tprompt_only`` (S = T_e), K = 1..3,
and ``reconstruction_width = 0`` (no M-Reconstruction head).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

VARIANTS = ("udp", "mp", "mprompt_only", "tprompt_only")
ROUTERS = ("softmax", "sigmoid_normalised")  # paper / public reference code


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """What one output modality's decoder is conditioned on: T_e is (text_length, width)."""

    num_queries: int = 1  # N^X (paper: 1 for image/audio/video)
    width: int = 768  # decoder text-encoder width D_X (SD1.5 768, Zeroscope 1024, AudioLDM CLAP 512)
    text_length: int = 77  # tokens of T_e (77 for CLIP; 1 for CLAP's pooled embedding)


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    llm_width: int = 4096
    width: int = 512
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 2048
    num_experts: int = 2
    router_hidden: int = 1024
    router: str = "softmax"
    variant: str = "udp"
    alpha: float = 0.2
    reconstruction_width: int = 1024  # ImageBind width; 0 = no M-Reconstruction head
    outputs: Mapping[str, OutputSpec] = dataclasses.field(
        default_factory=lambda: {
            "IMAGE": OutputSpec(1, 768, 77),
            "VIDEO": OutputSpec(1, 1024, 77),
            "AUDIO": OutputSpec(1, 512, 1),
        }
    )
    dtype: str = "float32"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"controller variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.router not in ROUTERS:
            raise ValueError(f"controller router must be one of {ROUTERS}, got {self.router!r}")
        if self.width % self.num_heads:
            raise ValueError(f"controller width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.num_experts < 1:
            raise ValueError(f"controller num_experts must be >= 1, got {self.num_experts}")
        for name, spec in self.outputs.items():
            if spec.num_queries not in (1, spec.text_length):
                raise ValueError(
                    f"output {name}: num_queries {spec.num_queries} must be 1 (broadcast) or text_length "
                    f"{spec.text_length} so f_L(Q̄) adds onto T_e"
                )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ControllerConfig:
        d = dict(d)
        if "outputs" in d:
            d["outputs"] = {k: OutputSpec(**dict(v)) for k, v in dict(d["outputs"]).items()}
        return cls(**d)


def _dense(features, axes, name, dtype, init=None):
    return nn.Dense(
        features,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(init or nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
        name=name,
    )


def _layer_norm(name, dtype):
    return nn.LayerNorm(
        dtype=dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("ctrl_embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("ctrl_embed",)),
        name=name,
    )


class ControllerBlock(nn.Module):
    """Pre-norm transformer layer (bidirectional self-attention + GELU MLP) over queries and M-Prompt memory."""

    cfg: ControllerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        head_dim = cfg.width // cfg.num_heads
        h = _layer_norm("attention_norm", cfg.dtype)(x)
        qkv_axes = ("ctrl_embed", "heads", "head_dim")
        q, k, v = (
            nn.DenseGeneral(
                (cfg.num_heads, head_dim),
                dtype=cfg.dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), qkv_axes),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "head_dim")),
                name=name,
            )(h)
            for name in ("query", "key", "value")
        )
        flat = [t.reshape((-1,) + t.shape[-3:]) for t in (q, k, v)]  # (batch*groups, T, H, hd)
        attended = jax.nn.dot_product_attention(*flat, scale=head_dim**-0.5).reshape(q.shape)
        x = x + nn.DenseGeneral(
            cfg.width,
            axis=(-2, -1),
            dtype=cfg.dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("heads", "head_dim", "ctrl_embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("ctrl_embed",)),
            name="out",
        )(attended)
        h = _layer_norm("mlp_norm", cfg.dtype)(x)
        h = nn.gelu(_dense(cfg.mlp_dim, ("ctrl_embed", "mlp"), "mlp_in", cfg.dtype)(h))
        return x + _dense(cfg.width, ("mlp", "ctrl_embed"), "mlp_out", cfg.dtype)(h)


class ProjectionExpert(nn.Module):
    """f_P^k: reads the M-Queries together with the projected M-Prompt state; returns the query positions."""

    cfg: ControllerConfig

    @nn.compact
    def __call__(self, queries: jax.Array, m_prompt: jax.Array) -> jax.Array:
        """``queries`` (B, G, N, d), ``m_prompt`` (B, G, llm_width) -> (B, G, N, d)."""
        cfg = self.cfg
        memory = _dense(cfg.width, ("embed", "ctrl_embed"), "memory_in", cfg.dtype)(m_prompt)[..., None, :]
        x = jnp.concatenate([queries.astype(memory.dtype), memory], axis=-2)
        for i in range(cfg.num_layers):
            x = ControllerBlock(cfg, name=f"layer_{i}")(x)
        return _layer_norm("final_norm", cfg.dtype)(x[..., : queries.shape[-2], :])


class DecodersController(nn.Module):
    cfg: ControllerConfig

    def setup(self):
        cfg = self.cfg
        if cfg.variant == "mp":
            self.modality_experts = {m: ProjectionExpert(cfg, name=f"expert_{m.lower()}") for m in cfg.outputs}
        else:
            self.shared_experts = [ProjectionExpert(cfg, name=f"expert_{k}") for k in range(cfg.num_experts)]
        self.router_hidden = _dense(cfg.router_hidden, ("embed", "mlp"), "router_hidden", cfg.dtype)
        self.router_out = _dense(cfg.num_experts, ("mlp", "experts"), "router_out", cfg.dtype)
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("queries", "ctrl_embed"))
        self.queries = {
            m: self.param(f"queries_{m.lower()}", init, (spec.num_queries, cfg.width), jnp.float32)
            for m, spec in cfg.outputs.items()
        }
        self.to_decoder = {
            m: _dense(spec.width, ("ctrl_embed", "decoder_embed"), f"to_decoder_{m.lower()}", cfg.dtype)
            for m, spec in cfg.outputs.items()
        }
        if cfg.reconstruction_width:
            self.to_encoder = {
                m: _dense(
                    cfg.reconstruction_width, ("ctrl_embed", "encoder_embed"), f"to_encoder_{m.lower()}", cfg.dtype
                )
                for m in cfg.outputs
            }

    def experts_for(self, modality: str) -> list[ProjectionExpert]:
        return [self.modality_experts[modality]] if self.cfg.variant == "mp" else list(self.shared_experts)

    def router_weights(self, m_prompt: jax.Array, modality: str) -> jax.Array:
        """(B, G, K) mixing weights of the experts used for ``modality``."""
        if len(self.experts_for(modality)) == 1:
            return jnp.ones(m_prompt.shape[:-1] + (1,), jnp.float32)
        logits = self.router_out(nn.gelu(self.router_hidden(m_prompt))).astype(jnp.float32)
        if self.cfg.router == "softmax":
            return jax.nn.softmax(logits, axis=-1)
        gates = jax.nn.sigmoid(logits)
        return gates / jnp.sum(gates, axis=-1, keepdims=True)

    def __call__(self, m_prompt: jax.Array, t_e: jax.Array, modality: str) -> dict[str, jax.Array]:
        """``m_prompt`` (B, G, llm_width), ``t_e`` (B, G, text_length, width) -> the controller's outputs:

        ``q_bar`` (B, G, N, d), ``s`` (B, G, text_length, width) = the decoder condition, ``weights`` (B, G, K),
        and ``reconstruction`` (B, G, reconstruction_width) when that head exists.
        """
        cfg = self.cfg
        if modality not in cfg.outputs:
            raise KeyError(f"no controller output for modality {modality!r} (configured: {sorted(cfg.outputs)})")
        queries = jnp.broadcast_to(self.queries[modality], m_prompt.shape[:-1] + self.queries[modality].shape)
        weights = self.router_weights(m_prompt, modality)
        expert_outputs = jnp.stack([f(queries, m_prompt) for f in self.experts_for(modality)], axis=-3)
        q_bar = jnp.einsum("bgk,bgknd->bgnd", weights.astype(expert_outputs.dtype), expert_outputs)
        projected = self.to_decoder[modality](q_bar).astype(jnp.float32)  # (B, G, N, D_X)
        t_e = t_e.astype(jnp.float32)
        if cfg.variant == "tprompt_only":
            s = t_e
        elif cfg.variant == "mprompt_only":
            s = jnp.broadcast_to(projected, t_e.shape)
        else:
            s = t_e + cfg.alpha * projected
        out = {"q_bar": q_bar, "s": s, "weights": weights}
        if cfg.reconstruction_width:
            out["reconstruction"] = self.to_encoder[modality](q_bar.mean(axis=-2)).astype(jnp.float32)
        return out

    def init_all(self, m_prompt: jax.Array) -> dict[str, dict[str, jax.Array]]:
        """Runs every configured modality once (creates all parameters at init)."""
        out = {}
        for modality, spec in self.cfg.outputs.items():
            t_e = jnp.zeros(m_prompt.shape[:-1] + (spec.text_length, spec.width), jnp.float32)
            out[modality] = self(m_prompt, t_e, modality)
        return out


def init_controller(cfg: ControllerConfig, rng: jax.Array) -> Any:
    """Boxed (logically partitioned) controller params; ``nn.unbox`` them for plain arrays."""
    m_prompt = jnp.zeros((1, 1, cfg.llm_width), jnp.float32)
    return DecodersController(cfg).init(rng, m_prompt, method=DecodersController.init_all)["params"]
