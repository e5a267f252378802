"""Noise schedulers (DDIM, PNDM, Euler, DPM-Solver++) matching diffusers' PyTorch classes step for step.

Why a functional shape: the sampling loop runs inside ``jax.jit`` / ``lax.fori_loop``, so every mutable
thing diffusers keeps on the scheduler object (timesteps, sigma tables, PNDM's ``ets`` list, DPM's
``model_outputs``, counters) lives in a fixed-shape pytree state that is the loop carry, and each step is
addressed by the integer loop counter ``step_index`` instead of a timestep lookup.

Usage::

    sched = load_scheduler("sd15/")                      # class picked from scheduler_config.json
    state = sched.set_timesteps(50, latents.shape)        # host-side tables + history buffers
    latents = latents * sched.init_noise_sigma(state)
    def body(i, carry):
        latents, state = carry
        x = sched.scale_model_input(state, latents, i)
        eps = unet(x, state.timesteps[i])
        return sched.step(state, eps, i, latents)
    latents, state = lax.fori_loop(0, state.timesteps.shape[0], body, (latents, state))

A scheduler is a frozen (hashable) config dataclass, so it may be a static argument of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from spider_jax.diffusion import scheduler_utils as su
from spider_jax.diffusion.scheduler_utils import SchedulerConfigError, add_noise, get_velocity

__all__ = [
    "DDIMScheduler",
    "DDIMState",
    "DPMSolverMultistepScheduler",
    "DPMState",
    "EulerDiscreteScheduler",
    "EulerState",
    "PNDMScheduler",
    "PNDMState",
    "SCHEDULERS",
    "SchedulerConfigError",
    "add_noise",
    "get_velocity",
    "load_scheduler",
    "scheduler_from_config",
]

F32 = jnp.float32


# ============================================================================================== DDIM
class DDIMState(struct.PyTreeNode):
    """Loop carry for DDIM: integer timesteps and the alpha table."""

    timesteps: jax.Array  # (n,) int32, descending
    alphas_cumprod: jax.Array  # (num_train,) float32
    final_alpha_cumprod: jax.Array  # () float32
    num_inference_steps: int = struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class DDIMScheduler(su.UnitNoiseMixin, su.SchedulerConfig):
    """diffusers ``DDIMScheduler`` (Song et al. 2020); eta > 0 needs ``key`` or ``variance_noise``."""

    class_name: ClassVar[str] = "DDIMScheduler"
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    rescale_betas_zero_snr: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        su.check_prediction(self.class_name, self.prediction_type, ("epsilon", "sample", "v_prediction"))

    def set_timesteps(
        self, num_inference_steps: int, sample_shape: Sequence[int] | None = None, dtype: Any = F32
    ) -> DDIMState:
        """Timestep grid for ``num_inference_steps`` (``sample_shape``/``dtype`` unused: DDIM keeps no history)."""
        ts = su.spaced_timesteps(
            self.timestep_spacing, self.num_train_timesteps, num_inference_steps, self.steps_offset
        )
        ac = self.alphas_cumprod()
        final = np.float32(1.0) if self.set_alpha_to_one else ac[0]
        return DDIMState(
            timesteps=jnp.asarray(ts.astype(np.int64), jnp.int32),
            alphas_cumprod=jnp.asarray(ac),
            final_alpha_cumprod=jnp.asarray(final, F32),
            num_inference_steps=num_inference_steps,
        )

    def step(
        self,
        state: DDIMState,
        model_output: jax.Array,
        step_index: jax.Array | int,
        sample: jax.Array,
        *,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        key: jax.Array | None = None,
        variance_noise: jax.Array | None = None,
    ) -> tuple[jax.Array, DDIMState]:
        """x_t -> x_{t-1}; eta = 0 is deterministic DDIM, eta = 1 is DDPM-like ancestral sampling."""
        t = state.timesteps[step_index]
        prev_t = t - self.num_train_timesteps // state.num_inference_steps
        a_t, a_prev = su.alpha_pair(state, t, prev_t)
        b_t = 1 - a_t
        x = sample.astype(F32)
        mo = model_output.astype(F32)
        if self.prediction_type == "epsilon":
            x0, eps = (x - jnp.sqrt(b_t) * mo) / jnp.sqrt(a_t), mo
        elif self.prediction_type == "sample":
            x0 = mo
            eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(b_t)
        else:
            x0 = jnp.sqrt(a_t) * x - jnp.sqrt(b_t) * mo
            eps = jnp.sqrt(a_t) * mo + jnp.sqrt(b_t) * x
        if self.thresholding:
            x0 = su.threshold_sample(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        elif self.clip_sample:
            x0 = jnp.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        std = 0.0
        if eta > 0:
            variance = ((1 - a_prev) / b_t) * (1 - a_t / a_prev)
            std = eta * jnp.sqrt(variance)
        if use_clipped_model_output:
            eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(b_t)
        prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(1 - a_prev - std**2) * eps
        if eta > 0:
            if variance_noise is None:
                if key is None:
                    raise ValueError("DDIMScheduler.step with eta > 0 needs `key` or `variance_noise`")
                variance_noise = jax.random.normal(key, sample.shape, F32)
            prev = prev + std * variance_noise.astype(F32)
        return prev.astype(sample.dtype), state

    def add_noise(self, state: DDIMState, original: jax.Array, noise: jax.Array, timesteps: jax.Array) -> jax.Array:
        """Forward diffusion at integer training timesteps (training / img2img)."""
        return add_noise(state.alphas_cumprod, original, noise, timesteps)


# ============================================================================================== PNDM
class PNDMState(struct.PyTreeNode):
    """Loop carry for PNDM: timesteps, alpha table and the linear-multistep history."""

    timesteps: jax.Array  # (num_prk_steps + plms steps,) int32
    alphas_cumprod: jax.Array
    final_alpha_cumprod: jax.Array
    ets: jax.Array  # (4, *sample) past eps, newest last
    ets_count: jax.Array  # () int32, valid entries in ets
    cur_sample: jax.Array  # (*sample) sample held over between the first two PLMS / within a PRK group
    cur_model_output: jax.Array  # (*sample) running Runge-Kutta sum
    counter: jax.Array  # () int32, steps taken (diffusers' self.counter)
    num_inference_steps: int = struct.field(pytree_node=False)
    num_prk_steps: int = struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class PNDMScheduler(su.UnitNoiseMixin, su.SchedulerConfig):
    """diffusers ``PNDMScheduler`` (Liu et al. 2022); SD1.5 ships it with ``skip_prk_steps=True``.

    Note the timestep list is longer than ``num_inference_steps``: n + 1 with ``skip_prk_steps`` (the second
    step revisits the first), n + 9 without (12 Runge-Kutta sub-steps replace the last 3 PLMS steps).
    """

    class_name: ClassVar[str] = "PNDMScheduler"
    skip_prk_steps: bool = False
    set_alpha_to_one: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        su.check_prediction(self.class_name, self.prediction_type, ("epsilon", "v_prediction"))

    def set_timesteps(
        self, num_inference_steps: int, sample_shape: Sequence[int] | None = None, dtype: Any = F32
    ) -> PNDMState:
        """Timesteps (PRK then PLMS) plus zeroed history buffers shaped like the sample."""
        shape = su.buffer_shape(self.class_name, sample_shape)
        n = num_inference_steps
        asc = su.spaced_timesteps(self.timestep_spacing, self.num_train_timesteps, n, self.steps_offset)[::-1]
        if self.skip_prk_steps:
            prk = np.zeros((0,))
            plms = np.concatenate([asc[:-1], asc[-2:-1], asc[-1:]])[::-1]
        else:
            if n < 4:
                raise ValueError(f"PNDMScheduler with Runge-Kutta warm-up needs >= 4 steps, got {n}")
            half = self.num_train_timesteps // n // 2
            prk = np.repeat(asc[-4:], 2) + np.tile([0, half], 4)
            prk = np.repeat(prk[:-1], 2)[1:-1][::-1]
            plms = asc[:-3][::-1]
        ts = np.concatenate([prk, plms]).astype(np.int64)
        ac = self.alphas_cumprod()
        zeros = jnp.zeros(shape, dtype)
        return PNDMState(
            timesteps=jnp.asarray(ts, jnp.int32),
            alphas_cumprod=jnp.asarray(ac),
            final_alpha_cumprod=jnp.asarray(np.float32(1.0) if self.set_alpha_to_one else ac[0], F32),
            ets=jnp.zeros((4, *shape), dtype),
            ets_count=jnp.zeros((), jnp.int32),
            cur_sample=zeros,
            cur_model_output=zeros,
            counter=jnp.zeros((), jnp.int32),
            num_inference_steps=n,
            num_prk_steps=len(prk),
        )

    def _prev_sample(self, state: PNDMState, sample, timestep, prev_timestep, eps) -> jax.Array:
        """PNDM's transfer x_t -> x_{t'} given an eps estimate (formula (9) of the paper)."""
        a_t, a_prev = su.alpha_pair(state, timestep, prev_timestep)
        b_t, b_prev = 1 - a_t, 1 - a_prev
        if self.prediction_type == "v_prediction":
            eps = jnp.sqrt(a_t) * eps + jnp.sqrt(b_t) * sample
        denom = a_t * jnp.sqrt(b_prev) + jnp.sqrt(a_t * b_t * a_prev)
        return jnp.sqrt(a_prev / a_t) * sample - (a_prev - a_t) * eps / denom

    def step(
        self, state: PNDMState, model_output: jax.Array, step_index: jax.Array | int, sample: jax.Array
    ) -> tuple[jax.Array, PNDMState]:
        """One PRK sub-step while ``counter < num_prk_steps``, else one PLMS step."""
        mo = model_output.astype(state.ets.dtype)
        t = state.timesteps[step_index]
        if state.num_prk_steps == 0:
            prev, new = self._step_plms(state, mo, t, sample)
        else:
            prev, new = jax.lax.cond(
                state.counter < state.num_prk_steps,
                lambda: self._step_prk(state, mo, t, sample),
                lambda: self._step_plms(state, mo, t, sample),
            )
        return prev.astype(sample.dtype), new.replace(counter=state.counter + 1)

    def _step_prk(self, state: PNDMState, mo, t, sample):
        c = state.counter
        half = self.num_train_timesteps // state.num_inference_steps // 2
        prev_t = t - jnp.where(c % 2 == 1, 0, half)
        timestep = state.timesteps[c // 4 * 4]
        phase = c % 4
        first = phase == 0
        cmo = jnp.where(first, 0.0, state.cur_model_output)
        weight = jnp.where((phase == 1) | (phase == 2), 1 / 3, 1 / 6).astype(mo.dtype)
        eps = jnp.where(phase == 3, cmo + weight * mo, mo)
        new_cmo = jnp.where(phase == 3, jnp.zeros_like(cmo), cmo + weight * mo)
        cur_sample = jnp.where(first, sample.astype(mo.dtype), state.cur_sample)
        ets = jnp.where(first, jnp.concatenate([state.ets[1:], mo[None]]), state.ets)
        count = jnp.where(first, jnp.minimum(state.ets_count + 1, 4), state.ets_count)
        prev = self._prev_sample(state, cur_sample, timestep, prev_t, eps)
        return prev.astype(mo.dtype), state.replace(
            ets=ets, ets_count=count, cur_sample=cur_sample, cur_model_output=new_cmo
        )

    def _step_plms(self, state: PNDMState, mo, t, sample):
        c = state.counter
        ratio = self.num_train_timesteps // state.num_inference_steps
        revisit = c == 1  # the second step re-evaluates the first timestep (Heun-like warm-up)
        timestep = jnp.where(revisit, t + ratio, t)
        prev_t = jnp.where(revisit, t, t - ratio)
        ets = jnp.where(revisit, state.ets, jnp.concatenate([state.ets[1:], mo[None]]))
        count = jnp.where(revisit, state.ets_count, jnp.minimum(state.ets_count + 1, 4))
        e = [ets[3], ets[2], ets[1], ets[0]]  # newest first
        branches = [
            lambda: mo,
            lambda: (mo + e[0]) / 2,
            lambda: (3 * e[0] - e[1]) / 2,
            lambda: (23 * e[0] - 16 * e[1] + 5 * e[2]) / 12,
            lambda: (1 / 24) * (55 * e[0] - 59 * e[1] + 37 * e[2] - 9 * e[3]),
        ]
        branch = jnp.where(count == 1, jnp.where(c == 0, 0, 1), count)
        eps = jax.lax.switch(branch, branches)
        x = sample.astype(mo.dtype)
        cur_sample = jnp.where(c == 0, x, state.cur_sample)
        x = jnp.where(revisit & (count == 1), state.cur_sample, x)
        prev = self._prev_sample(state, x, timestep, prev_t, eps)
        return prev.astype(mo.dtype), state.replace(ets=ets, ets_count=count, cur_sample=cur_sample)

    def add_noise(self, state: PNDMState, original: jax.Array, noise: jax.Array, timesteps: jax.Array) -> jax.Array:
        """Forward diffusion at integer training timesteps."""
        return add_noise(state.alphas_cumprod, original, noise, timesteps)


# ============================================================================================== Euler
class EulerState(struct.PyTreeNode):
    """Loop carry for Euler: float timesteps and the sigma ladder (n + 1 entries, last is the final sigma)."""

    timesteps: jax.Array  # (n,) float32
    sigmas: jax.Array  # (n + 1,) float32
    num_inference_steps: int = struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class EulerDiscreteScheduler(su.SchedulerConfig):
    """diffusers ``EulerDiscreteScheduler`` (Karras et al. 2022, Algorithm 2) with optional Karras sigmas."""

    class_name: ClassVar[str] = "EulerDiscreteScheduler"
    interpolation_type: str = "linear"
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    timestep_spacing: str = "linspace"
    timestep_type: str = "discrete"
    rescale_betas_zero_snr: bool = False
    final_sigmas_type: str = "zero"

    def __post_init__(self) -> None:
        super().__post_init__()
        su.check_prediction(
            self.class_name, self.prediction_type, ("epsilon", "sample", "original_sample", "v_prediction")
        )
        if self.use_exponential_sigmas or self.use_beta_sigmas:
            raise NotImplementedError(f"{self.class_name}: exponential/beta sigmas are not implemented")
        if self.interpolation_type not in ("linear", "log_linear"):
            raise ValueError(f"{self.class_name}: interpolation_type {self.interpolation_type!r}")
        if self.timestep_type == "continuous" and self.prediction_type == "v_prediction":
            raise NotImplementedError(f"{self.class_name}: timestep_type='continuous' with v_prediction")

    def set_timesteps(
        self, num_inference_steps: int, sample_shape: Sequence[int] | None = None, dtype: Any = F32
    ) -> EulerState:
        """Float timesteps and sigmas interpolated from the training sigma table (no history buffers)."""
        n = num_inference_steps
        ts = su.spaced_timesteps(
            self.timestep_spacing, self.num_train_timesteps, n, self.steps_offset, round_linspace=False
        ).astype(np.float32)
        ac = su.sigma_alphas_cumprod(self)
        base = su.train_sigmas(ac)
        log_sigmas = np.log(base)
        if self.interpolation_type == "linear":
            sigmas = np.interp(ts, np.arange(len(base)), base)
        else:  # torch.linspace(float32) in diffusers: equal to float64 linspace up to float32 rounding
            sigmas = np.exp(np.linspace(np.log(base[-1]), np.log(base[0]), n + 1).astype(np.float32))
        if self.use_karras_sigmas:
            lo = self.sigma_min if self.sigma_min is not None else float(sigmas[-1])
            hi = self.sigma_max if self.sigma_max is not None else float(sigmas[0])
            sigmas = su.karras_sigmas(lo, hi, n)
            ts = su.sigma_to_t(sigmas, log_sigmas).astype(np.float32)
        sigmas = np.concatenate([sigmas, [su.final_sigma(self.final_sigmas_type, ac)]]).astype(np.float32)
        return EulerState(timesteps=jnp.asarray(ts, F32), sigmas=jnp.asarray(sigmas), num_inference_steps=n)

    def init_noise_sigma(self, state: EulerState) -> jax.Array:
        """Start-noise std: the largest sigma (sqrt(sigma^2 + 1) for 'leading', which never reaches T)."""
        top = jnp.max(state.sigmas)
        if self.timestep_spacing in ("linspace", "trailing"):
            return top
        return jnp.sqrt(top**2 + 1)

    def scale_model_input(self, state: EulerState, sample: jax.Array, step_index: jax.Array | int) -> jax.Array:
        """Divides by sqrt(sigma^2 + 1) so the UNet sees unit-variance inputs as in VP training."""
        sigma = state.sigmas[step_index]
        return (sample.astype(F32) / jnp.sqrt(sigma**2 + 1)).astype(sample.dtype)

    def step(
        self,
        state: EulerState,
        model_output: jax.Array,
        step_index: jax.Array | int,
        sample: jax.Array,
        *,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, EulerState]:
        """One Euler step of the probability-flow ODE in sigma; ``s_churn > 0`` adds fresh noise first."""
        x = sample.astype(F32)
        mo = model_output.astype(F32)
        sigma = state.sigmas[step_index]
        sigma_hat = sigma
        if s_churn > 0:
            gamma_plus_one = min(s_churn / (state.sigmas.shape[0] - 1), 2**0.5 - 1) + 1.0
            churn = (s_tmin <= sigma) & (sigma <= s_tmax)
            sigma_hat = sigma * jnp.where(churn, gamma_plus_one, 1.0).astype(F32)
            if noise is None:
                if key is None:
                    raise ValueError("EulerDiscreteScheduler.step with s_churn > 0 needs `key` or `noise`")
                noise = jax.random.normal(key, sample.shape, F32)
            bumped = x + noise.astype(F32) * s_noise * jnp.sqrt(sigma_hat**2 - sigma**2)
            x = jnp.where(churn & (gamma_plus_one > 1.0), bumped, x)
        if self.prediction_type in ("sample", "original_sample"):
            x0 = mo
        elif self.prediction_type == "epsilon":
            x0 = x - sigma_hat * mo
        else:
            x0 = mo * (-sigma / jnp.sqrt(sigma**2 + 1)) + x / (sigma**2 + 1)
        derivative = (x - x0) / sigma_hat
        prev = x + derivative * (state.sigmas[step_index + 1] - sigma_hat)
        return prev.astype(model_output.dtype), state

    def add_noise(self, state: EulerState, original: jax.Array, noise: jax.Array, timesteps: jax.Array) -> jax.Array:
        """x + sigma(t) * noise, with t looked up in the inference schedule as diffusers does."""
        sigma = state.sigmas[su.index_for_timestep(state.timesteps, timesteps)].astype(original.dtype)
        return original + noise * su.expand_to(sigma, original.ndim)


# ============================================================================================== DPM-Solver++
class DPMState(struct.PyTreeNode):
    """Loop carry for DPM-Solver++: timesteps, sigmas and the last ``solver_order`` x0 predictions."""

    timesteps: jax.Array  # (n,) int32
    sigmas: jax.Array  # (n + 1,) float32
    model_outputs: jax.Array  # (solver_order, *sample), oldest first
    lower_order_nums: jax.Array  # () int32, steps taken so far, capped at solver_order
    num_inference_steps: int = struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class DPMSolverMultistepScheduler(su.UnitNoiseMixin, su.SchedulerConfig):
    """diffusers ``DPMSolverMultistepScheduler`` restricted to algorithm_type 'dpmsolver++' (its default).

    Orders 1-3, 'midpoint' or 'heun' second-order variant, lower-order final steps, Karras sigmas.
    """

    class_name: ClassVar[str] = "DPMSolverMultistepScheduler"
    solver_order: int = 2
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_lu_lambdas: bool = False
    use_flow_sigmas: bool = False
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -math.inf
    variance_type: str | None = None
    timestep_spacing: str = "linspace"
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        # diffusers silently maps these legacy names (from DEIS / UniPC configs) onto its own.
        if self.algorithm_type == "deis":
            object.__setattr__(self, "algorithm_type", "dpmsolver++")
        if self.solver_type in ("logrho", "bh1", "bh2"):
            object.__setattr__(self, "solver_type", "midpoint")
        name = self.class_name
        su.check_prediction(name, self.prediction_type, ("epsilon", "sample", "v_prediction"))
        if self.algorithm_type != "dpmsolver++":
            raise NotImplementedError(f"{name}: algorithm_type {self.algorithm_type!r} (only 'dpmsolver++')")
        if self.solver_type not in ("midpoint", "heun"):
            raise NotImplementedError(f"{name}: solver_type {self.solver_type!r}")
        if self.solver_order not in (1, 2, 3):
            raise ValueError(f"{name}: solver_order must be 1, 2 or 3, got {self.solver_order}")
        unsupported = [
            k
            for k in (
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_lu_lambdas",
                "use_flow_sigmas",
                "use_dynamic_shifting",
            )
            if getattr(self, k)
        ]
        if unsupported or self.variance_type is not None:
            raise NotImplementedError(f"{name}: {unsupported or ['variance_type']} not implemented")
        if self.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"{name}: final_sigmas_type {self.final_sigmas_type!r}")

    def _timesteps(self, n: int, ac: np.ndarray) -> np.ndarray:
        alpha, sigma = np.sqrt(ac), np.sqrt(np.float32(1.0) - ac)
        lambdas = np.log(alpha) - np.log(sigma)
        clipped = int(np.searchsorted(lambdas[::-1], self.lambda_min_clipped))
        last = self.num_train_timesteps - clipped
        if self.timestep_spacing == "linspace":
            return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        if self.timestep_spacing == "leading":
            ratio = last // (n + 1)
            return (np.arange(n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + self.steps_offset
        return np.arange(last, 0, -self.num_train_timesteps / n).round().astype(np.int64) - 1

    def set_timesteps(
        self, num_inference_steps: int, sample_shape: Sequence[int] | None = None, dtype: Any = F32
    ) -> DPMState:
        """Timesteps, sigma ladder and a zeroed x0 history of ``solver_order`` sample-shaped slots."""
        shape = su.buffer_shape(self.class_name, sample_shape)
        ac = su.sigma_alphas_cumprod(self)
        ts = self._timesteps(num_inference_steps, ac)
        base = su.train_sigmas(ac)
        if self.use_karras_sigmas:
            sigmas = su.karras_sigmas(float(base[0]), float(base[-1]), num_inference_steps)
            ts_f = su.sigma_to_t(sigmas, np.log(base))
            ts = (ts_f if self.beta_schedule == "squaredcos_cap_v2" else ts_f.round()).astype(np.int64)
        else:
            sigmas = np.interp(ts, np.arange(len(base)), base)
        sigmas = np.concatenate([sigmas, [su.final_sigma(self.final_sigmas_type, ac)]]).astype(np.float32)
        return DPMState(
            timesteps=jnp.asarray(ts, jnp.int32),
            sigmas=jnp.asarray(sigmas),
            model_outputs=jnp.zeros((self.solver_order, *shape), dtype),
            lower_order_nums=jnp.zeros((), jnp.int32),
            num_inference_steps=len(ts),
        )

    def _to_x0(self, model_output: jax.Array, sample: jax.Array, sigma: jax.Array) -> jax.Array:
        """DPM-Solver++ works on data predictions: convert eps / v / x0 outputs to x0."""
        if self.prediction_type == "sample":
            x0 = model_output
        else:
            alpha_t, sigma_t = su.alpha_sigma(sigma)
            if self.prediction_type == "epsilon":
                x0 = (sample - sigma_t * model_output) / alpha_t
            else:
                x0 = alpha_t * sample - sigma_t * model_output
        if self.thresholding:
            x0 = su.threshold_sample(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        return x0

    def step(
        self, state: DPMState, model_output: jax.Array, step_index: jax.Array | int, sample: jax.Array
    ) -> tuple[jax.Array, DPMState]:
        """One multistep update; the order ramps up over the first steps and drops again at the end."""
        i = jnp.asarray(step_index)
        n = state.num_inference_steps
        few = self.lower_order_final and n < 15
        final_first = (i == n - 1) & (self.euler_at_final or few or self.final_sigmas_type == "zero")
        final_second = (i == n - 2) & few
        sig = state.sigmas
        x0 = self._to_x0(model_output.astype(F32), sample.astype(F32), sig[i]).astype(state.model_outputs.dtype)
        history = jnp.concatenate([state.model_outputs[1:], x0[None]])
        m = [history[-1 - k].astype(F32) for k in range(self.solver_order)]  # newest first
        x = sample.astype(F32)
        alpha_t, sigma_t = su.alpha_sigma(sig[i + 1])
        alpha_s0, sigma_s0 = su.alpha_sigma(sig[i])
        lam_t, lam_s0 = su.half_log_snr(alpha_t, sigma_t), su.half_log_snr(alpha_s0, sigma_s0)
        h = lam_t - lam_s0
        phi = jnp.exp(-h) - 1.0

        def first():
            return (sigma_t / sigma_s0) * x - (alpha_t * phi) * m[0]

        def second():
            lam_s1 = su.half_log_snr(*su.alpha_sigma(sig[i - 1]))
            r0 = (lam_s0 - lam_s1) / h
            d1 = (1.0 / r0) * (m[0] - m[1])
            if self.solver_type == "midpoint":
                return (sigma_t / sigma_s0) * x - (alpha_t * phi) * m[0] - 0.5 * (alpha_t * phi) * d1
            return (sigma_t / sigma_s0) * x - (alpha_t * phi) * m[0] + (alpha_t * (phi / h + 1.0)) * d1

        def third():
            lam_s1 = su.half_log_snr(*su.alpha_sigma(sig[i - 1]))
            lam_s2 = su.half_log_snr(*su.alpha_sigma(sig[i - 2]))
            r0, r1 = (lam_s0 - lam_s1) / h, (lam_s1 - lam_s2) / h
            d1_0, d1_1 = (1.0 / r0) * (m[0] - m[1]), (1.0 / r1) * (m[1] - m[2])
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
            return (
                (sigma_t / sigma_s0) * x
                - (alpha_t * phi) * m[0]
                + (alpha_t * (phi / h + 1.0)) * d1
                - (alpha_t * ((phi + h) / h**2 - 0.5)) * d2
            )

        lon = state.lower_order_nums
        use_first = (lon < 1) | final_first
        use_second = (lon < 2) | final_second
        branch = jnp.where(use_first, 0, jnp.where(use_second, 1, 2))
        branches = [first, second, third][: self.solver_order]
        prev = jax.lax.switch(jnp.minimum(branch, self.solver_order - 1), branches)
        new = state.replace(model_outputs=history, lower_order_nums=jnp.minimum(lon + 1, self.solver_order))
        return prev.astype(model_output.dtype), new

    def add_noise(self, state: DPMState, original: jax.Array, noise: jax.Array, timesteps: jax.Array) -> jax.Array:
        """alpha(t) x + sigma(t) noise, with t looked up in the inference schedule as diffusers does."""
        sigma = state.sigmas[su.index_for_timestep(state.timesteps, timesteps)]
        alpha_t, sigma_t = su.alpha_sigma(su.expand_to(sigma, original.ndim).astype(original.dtype))
        return alpha_t * original + sigma_t * noise


# ============================================================================================== factory
SCHEDULERS: dict[str, type[su.SchedulerConfig]] = {
    cls.class_name: cls for cls in (DDIMScheduler, PNDMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler)
}


def scheduler_from_config(config: Mapping[str, Any], source: str = "config") -> su.SchedulerConfig:
    """The scheduler named by ``config['_class_name']``."""
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise SchedulerConfigError(f"{source}: _class_name {name!r} is not one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(config, source=source)


def load_scheduler(folder: str | os.PathLike) -> su.SchedulerConfig:
    """Reads a diffusers ``scheduler_config.json`` (scheduler folder or pipeline folder) and builds its class."""
    config, path = su.read_scheduler_config(folder)
    return scheduler_from_config(config, source=path)
