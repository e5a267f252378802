"""Shared pieces of the noise schedulers: config loading, beta schedules, timestep grids, thresholding.

Everything that only depends on the config (betas, timestep grids, sigma tables) is computed on the host in
NumPy, once per ``set_timesteps``; only the per-step update runs in JAX. Host maths follows diffusers'
(PyTorch) arithmetic closely: float32 betas, cumulative products accumulated in float64 (as torch does on CPU)
so ``alphas_cumprod`` matches to ~3e-7 relative (the residue is torch's own float32 ``linspace`` rounding).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import jax
import jax.numpy as jnp
import numpy as np

CONFIG_NAME = "scheduler_config.json"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")


class SchedulerConfigError(ValueError):
    """A scheduler config that cannot be read or does not belong to the requested scheduler class."""


def find_scheduler_config(folder: str | os.PathLike) -> str:
    """``folder/scheduler_config.json`` or, for a whole pipeline folder, ``folder/scheduler/scheduler_config.json``."""
    candidates = [os.path.join(folder, CONFIG_NAME), os.path.join(folder, "scheduler", CONFIG_NAME)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no {CONFIG_NAME} found; looked at {candidates}")


def read_scheduler_config(folder: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """Returns (config dict, path it came from)."""
    path = find_scheduler_config(folder)
    try:
        with open(path) as f:
            config = json.load(f)  # diffusers writes -Infinity for lambda_min_clipped; json accepts it
    except json.JSONDecodeError as e:
        raise SchedulerConfigError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise SchedulerConfigError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config, path


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """Fields every scheduler shares; subclasses mirror their diffusers class's constructor arguments.

    Frozen and hashable, so a scheduler can be a static argument of ``jax.jit``.
    """

    class_name: ClassVar[str] = ""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    def __post_init__(self) -> None:
        if self.trained_betas is not None and not isinstance(self.trained_betas, tuple):
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in self.trained_betas))
        if self.trained_betas is None and self.beta_schedule not in BETA_SCHEDULES:
            raise NotImplementedError(
                f"{self.class_name}: beta_schedule {self.beta_schedule!r} (have {BETA_SCHEDULES})"
            )
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(f"{self.class_name}: timestep_spacing {self.timestep_spacing!r} not in {SPACINGS}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, check_class: bool = True, source: str = "config") -> Self:
        """Builds from a diffusers config dict; unknown keys are ignored (diffusers does the same).

        ``check_class=False`` allows diffusers' scheduler swapping, e.g. DDIM from SD1.5's PNDM config.
        """
        found = config.get("_class_name")
        if check_class and found is not None and found != cls.class_name:
            raise SchedulerConfigError(
                f"{source}: _class_name is {found!r} but {cls.class_name!r} was requested "
                "(pass check_class=False to reuse another scheduler's config on purpose)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, check_class: bool = True) -> Self:
        """Reads ``scheduler_config.json`` from a scheduler folder or a pipeline folder holding ``scheduler/``."""
        config, path = read_scheduler_config(folder)
        return cls.from_config(config, check_class=check_class, source=path)

    def to_config(self) -> dict[str, Any]:
        """The diffusers-style dict (with ``_class_name``), e.g. to write next to converted weights."""
        out = dataclasses.asdict(self)
        if out.get("trained_betas") is not None:
            out["trained_betas"] = list(out["trained_betas"])
        return {"_class_name": self.class_name, **out}

    # ---- host-side tables -------------------------------------------------------------------------------
    def betas(self) -> np.ndarray:
        """float32 betas (num_train_timesteps,), the noise added at each training step."""
        return make_betas(
            self.num_train_timesteps,
            self.beta_start,
            self.beta_end,
            self.beta_schedule,
            self.trained_betas,
            getattr(self, "rescale_betas_zero_snr", False),
        )

    def alphas_cumprod(self) -> np.ndarray:
        """float32 cumulative product of (1 - beta): the signal fraction at each training timestep."""
        return cumprod_f32(np.float32(1.0) - self.betas())


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def cumprod_f32(values: np.ndarray) -> np.ndarray:
    """float32 result of a float64-accumulated cumulative product (torch's CPU kernel accumulates in double)."""
    return np.cumprod(values.astype(np.float64)).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shifts/rescales sqrt(alphas_cumprod) so the last timestep has zero SNR (arXiv 2305.08891, Alg. 1)."""
    abar_sqrt = np.sqrt(cumprod_f32(np.float32(1.0) - betas))
    first, last = abar_sqrt[0], abar_sqrt[-1]
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return (np.float32(1.0) - alphas).astype(np.float32)


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: tuple[float, ...] | None = None,
    rescale_zero_snr: bool = False,
) -> np.ndarray:
    """Beta table for the diffusers schedules ``linear``, ``scaled_linear`` and ``squaredcos_cap_v2``."""
    if trained_betas is not None:
        betas = np.asarray(trained_betas, np.float32)
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps).astype(np.float32)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps).astype(np.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        n = num_train_timesteps
        betas = np.asarray(
            [min(1 - _cosine_alpha_bar((i + 1) / n) / _cosine_alpha_bar(i / n), 0.999) for i in range(n)], np.float32
        )
    else:
        raise NotImplementedError(f"beta_schedule {beta_schedule!r} (have {BETA_SCHEDULES})")
    if rescale_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def spaced_timesteps(spacing: str, num_train: int, num_steps: int, steps_offset: int, round_linspace: bool = True):
    """Descending float64 timestep grid used by DDIM, PNDM and Euler (DPM-Solver has its own n+1 variant).

    ``leading``: multiples of ``num_train // n`` plus ``steps_offset``; ``trailing``: counted down from the
    last training step; ``linspace``: evenly spread over [0, num_train-1] (Euler keeps it unrounded).
    """
    if not 0 < num_steps <= num_train:
        raise ValueError(f"num_inference_steps must be in [1, {num_train}], got {num_steps}")
    if spacing == "linspace":
        ts = np.linspace(0, num_train - 1, num_steps)
        ts = ts.round() if round_linspace else ts.astype(np.float32).astype(np.float64)
        return ts[::-1].copy()
    if spacing == "leading":
        ratio = num_train // num_steps
        return (np.arange(num_steps) * ratio).round()[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(num_train, 0, -num_train / num_steps)) - 1
    raise ValueError(f"timestep_spacing {spacing!r} not in {SPACINGS}")


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep whose sigma is ``sigma``, by linear interpolation in log-sigma."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) sigma ramp, denser near sigma_min."""
    ramp = np.linspace(0, 1, num_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """float32 sqrt((1 - abar) / abar): the noise-to-signal ratio of every training timestep."""
    return np.sqrt((np.float32(1.0) - alphas_cumprod) / alphas_cumprod)


# ---- pieces shared by the scheduler classes ------------------------------------------------------------------
def check_prediction(cls_name: str, prediction_type: str, allowed: Sequence[str]) -> None:
    """Rejects a prediction_type this scheduler cannot turn into a step."""
    if prediction_type not in allowed:
        raise ValueError(f"{cls_name}: prediction_type {prediction_type!r} not in {tuple(allowed)}")


def buffer_shape(cls_name: str, sample_shape: Sequence[int] | None) -> tuple[int, ...]:
    """History buffers need a fixed shape to be a loop carry, so multistep schedulers require it."""
    if sample_shape is None:
        raise ValueError(f"{cls_name}.set_timesteps needs sample_shape: its history buffers are part of the state")
    return tuple(int(d) for d in sample_shape)


class UnitNoiseMixin:
    """Defaults shared by schedulers whose model input needs no scaling and whose start noise is N(0, I)."""

    def init_noise_sigma(self, state: Any) -> jax.Array:
        """Std of the initial latent noise (the pipeline multiplies N(0, I) noise by it)."""
        return jnp.asarray(1.0, jnp.float32)

    def scale_model_input(self, state: Any, sample: jax.Array, step_index: jax.Array | int) -> jax.Array:
        """Identity; present so every scheduler plugs into the same loop."""
        return sample


def alpha_pair(state: Any, timestep: jax.Array, prev_timestep: jax.Array) -> tuple[jax.Array, jax.Array]:
    """alphas_cumprod at ``timestep`` and at ``prev_timestep`` (the final value when prev < 0)."""
    a_t = state.alphas_cumprod[timestep]
    a_prev = jnp.where(
        prev_timestep >= 0, state.alphas_cumprod[jnp.maximum(prev_timestep, 0)], state.final_alpha_cumprod
    )
    return a_t, a_prev


def final_sigma(kind: str, alphas_cumprod: np.ndarray) -> float:
    """Sigma after the last step: 0 (fully denoised) or the smallest training sigma."""
    if kind == "zero":
        return 0.0
    if kind == "sigma_min":
        return float(train_sigmas(alphas_cumprod[:1])[0])
    raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {kind!r}")


def sigma_alphas_cumprod(cfg: SchedulerConfig) -> np.ndarray:
    """alphas_cumprod for the sigma-parameterised schedulers (zero-SNR end nudged to 2**-24 as diffusers does)."""
    ac = cfg.alphas_cumprod()
    if getattr(cfg, "rescale_betas_zero_snr", False):
        ac[-1] = 2.0**-24
    return ac


def alpha_sigma(sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """VP (alpha_t, sigma_t) from the VE-style sigma = sigma_t / alpha_t."""
    alpha = 1 / jnp.sqrt(sigma**2 + 1)
    return alpha, sigma * alpha


def half_log_snr(alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """lambda = log(alpha_t / sigma_t), DPM-Solver's time variable."""
    return jnp.log(alpha) - jnp.log(sigma)


# ---- traced helpers for samples ------------------------------------------------------------------------------
def expand_to(values: jax.Array, ndim: int) -> jax.Array:
    """(B,) or scalar per-example values -> (B, 1, ..., 1) broadcastable against a rank-``ndim`` sample."""
    values = jnp.ravel(values)
    return values.reshape(values.shape + (1,) * (ndim - 1))


def add_noise(alphas_cumprod: jax.Array, original: jax.Array, noise: jax.Array, timesteps: jax.Array) -> jax.Array:
    """Forward diffusion q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, for training."""
    abar = jnp.asarray(alphas_cumprod, original.dtype)[jnp.asarray(timesteps)]
    return expand_to(jnp.sqrt(abar), original.ndim) * original + expand_to(jnp.sqrt(1 - abar), original.ndim) * noise


def get_velocity(alphas_cumprod: jax.Array, sample: jax.Array, noise: jax.Array, timesteps: jax.Array) -> jax.Array:
    """v-prediction target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
    abar = jnp.asarray(alphas_cumprod, sample.dtype)[jnp.asarray(timesteps)]
    return expand_to(jnp.sqrt(abar), sample.ndim) * noise - expand_to(jnp.sqrt(1 - abar), sample.ndim) * sample


def threshold_sample(sample: jax.Array, ratio: float, max_value: float) -> jax.Array:
    """Imagen dynamic thresholding: clip x0 per example to the ``ratio`` quantile of |x0| (>= 1) and rescale.

    The quantile runs over every non-batch element, so the result does not depend on NHWC vs NCHW layout.
    """
    flat = sample.reshape(sample.shape[0], -1).astype(jnp.float32)
    s = jnp.quantile(jnp.abs(flat), ratio, axis=1)
    s = jnp.minimum(jnp.maximum(s, 1.0), max_value)[:, None]
    return (jnp.clip(flat, -s, s) / s).reshape(sample.shape).astype(sample.dtype)


def index_for_timestep(schedule: jax.Array, timesteps: jax.Array) -> jax.Array:
    """Step index of each timestep in ``schedule``, diffusers' rule: the 2nd match when it repeats, else the
    1st; a timestep missing from the schedule maps to the last index."""
    timesteps = jnp.ravel(jnp.asarray(timesteps))
    matches = schedule[None, :] == timesteps[:, None].astype(schedule.dtype)
    count = matches.sum(axis=1)
    want = jnp.where(count > 1, 2, 1)
    idx = jnp.argmax(jnp.cumsum(matches, axis=1) >= want[:, None], axis=1)
    return jnp.where(count > 0, idx, schedule.shape[0] - 1)
