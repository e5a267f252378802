"""Parity of the JAX schedulers with diffusers' PyTorch ones: tables, timesteps, every sampling step."""

from __future__ import annotations

import json

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from spider_jax.diffusion import schedulers as S

SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
SHAPE = (2, 3, 5, 4)
TORCH = {
    S.DDIMScheduler: diffusers.DDIMScheduler,
    S.PNDMScheduler: diffusers.PNDMScheduler,
    S.EulerDiscreteScheduler: diffusers.EulerDiscreteScheduler,
    S.DPMSolverMultistepScheduler: diffusers.DPMSolverMultistepScheduler,
}

# (our class, config, num_inference_steps, step kwargs); "noise" in kwargs = per-step fresh noise is fed.
CASES = {
    "ddim-sd15-leading": (S.DDIMScheduler, dict(SD15, set_alpha_to_one=False, clip_sample=False), 20, {}),
    "ddim-trailing-v-zsnr": (
        S.DDIMScheduler,
        dict(SD15, timestep_spacing="trailing", prediction_type="v_prediction", rescale_betas_zero_snr=True),
        10,
        {},
    ),
    "ddim-linspace-clip": (S.DDIMScheduler, dict(timestep_spacing="linspace", clip_sample=True), 10, {}),
    "ddim-cos-sample-thresh": (
        S.DDIMScheduler,
        dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", thresholding=True, sample_max_value=1.5),
        8,
        {},
    ),
    "ddim-eta": (S.DDIMScheduler, dict(SD15, clip_sample=False), 10, dict(eta=0.6, use_clipped_model_output=True)),
    "pndm-sd15": (S.PNDMScheduler, dict(SD15, skip_prk_steps=True), 20, {}),
    "pndm-prk": (S.PNDMScheduler, dict(skip_prk_steps=False), 10, {}),
    "pndm-linspace-v": (
        S.PNDMScheduler,
        dict(SD15, skip_prk_steps=True, timestep_spacing="linspace", prediction_type="v_prediction"),
        7,
        {},
    ),
    "pndm-trailing": (S.PNDMScheduler, dict(SD15, skip_prk_steps=True, timestep_spacing="trailing"), 10, {}),
    "euler-sd15-leading": (S.EulerDiscreteScheduler, dict(SD15, timestep_spacing="leading"), 20, {}),
    "euler-linspace-v": (S.EulerDiscreteScheduler, dict(SD15, prediction_type="v_prediction"), 10, {}),
    "euler-trailing-karras": (
        S.EulerDiscreteScheduler,
        dict(SD15, timestep_spacing="trailing", use_karras_sigmas=True),
        12,
        {},
    ),
    "euler-churn": (S.EulerDiscreteScheduler, dict(SD15), 8, dict(s_churn=1.0, s_tmin=1.0)),
    "dpm-10": (S.DPMSolverMultistepScheduler, dict(SD15), 10, {}),
    "dpm-20": (S.DPMSolverMultistepScheduler, dict(SD15), 20, {}),
    "dpm-7": (S.DPMSolverMultistepScheduler, dict(SD15), 7, {}),
    "dpm-leading": (S.DPMSolverMultistepScheduler, dict(SD15, timestep_spacing="leading"), 16, {}),
    "dpm-trailing-v": (
        S.DPMSolverMultistepScheduler,
        dict(SD15, timestep_spacing="trailing", prediction_type="v_prediction"),
        10,
        {},
    ),
    "dpm-karras": (S.DPMSolverMultistepScheduler, dict(SD15, use_karras_sigmas=True), 12, {}),
    "dpm-order3": (S.DPMSolverMultistepScheduler, dict(SD15, solver_order=3), 16, {}),
    "dpm-heun-sigmamin": (
        S.DPMSolverMultistepScheduler,
        dict(solver_type="heun", final_sigmas_type="sigma_min", solver_order=3, euler_at_final=True),
        9,
        {},
    ),
    "dpm-sample-thresh": (
        S.DPMSolverMultistepScheduler,
        dict(SD15, prediction_type="sample", thresholding=True, sample_max_value=2.0),
        8,
        {},
    ),
}


def fake_torch(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Deterministic stand-in for a UNet, written identically for torch and JAX."""
    tf = torch.as_tensor(t).to(torch.float32)
    return 0.7 * x * torch.cos(tf * 0.003) + 0.3 * torch.sin(1.3 * x + tf * 0.01)


def fake_jax(x: jax.Array, t: jax.Array) -> jax.Array:
    tf = jnp.asarray(t).astype(jnp.float32)
    return 0.7 * x * jnp.cos(tf * 0.003) + 0.3 * jnp.sin(1.3 * x + tf * 0.01)


def torch_run(tsched, n: int, x0: np.ndarray, kwargs: dict):
    """diffusers' own pipeline loop; returns (timesteps, per-step samples, step noises fed)."""
    tsched.set_timesteps(n)
    x = torch.from_numpy(x0) * tsched.init_noise_sigma
    gen = torch.Generator().manual_seed(0)
    outs, noises = [], []
    for t in tsched.timesteps:
        mo = fake_torch(tsched.scale_model_input(x, t), t)
        kw = dict(kwargs)
        if "eta" in kw:
            kw["variance_noise"] = torch.randn(x.shape, generator=gen)
            noises.append(kw["variance_noise"].numpy())
        elif "s_churn" in kw:  # Euler draws from the generator itself; replay the same draw on our side
            kw["generator"] = gen
            replay = torch.Generator()
            replay.set_state(gen.get_state())
            noises.append(torch.randn(x.shape, generator=replay).numpy())
        x = tsched.step(mo, t, x, **kw).prev_sample
        outs.append(x.numpy())
    noises = np.stack(noises) if noises else np.zeros((len(outs), 1), np.float32)
    return tsched.timesteps.numpy(), np.stack(outs), noises


def jax_run(sched, n: int, x0: np.ndarray, kwargs: dict, noises: np.ndarray):
    """The same loop inside one jit, as lax.scan over the step index; returns every intermediate sample."""
    state = sched.set_timesteps(n, x0.shape)

    @jax.jit
    def run(state, x, noises):
        x = x * sched.init_noise_sigma(state)

        def body(carry, xs):
            x, state = carry
            i, noise = xs
            kw = dict(kwargs)
            if "eta" in kw:
                kw["variance_noise"] = noise
            elif "s_churn" in kw:
                kw["noise"] = noise
            mo = fake_jax(sched.scale_model_input(state, x, i), state.timesteps[i])
            x, state = sched.step(state, mo, i, x, **kw)
            return (x, state), x

        _, xs = jax.lax.scan(body, (x, state), (jnp.arange(state.timesteps.shape[0]), noises))
        return xs

    return state, np.asarray(run(state, jnp.asarray(x0), jnp.asarray(noises)))


@pytest.mark.parametrize("name", list(CASES))
def test_sampling_parity(name):
    cls, cfg, n, kwargs = CASES[name]
    tsched = TORCH[cls](**cfg)
    sched = cls.from_config(tsched.config)
    np.testing.assert_allclose(sched.alphas_cumprod(), tsched.alphas_cumprod.numpy(), rtol=1e-6, atol=1e-9)
    x0 = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    ref_ts, ref, noises = torch_run(tsched, n, x0, kwargs)
    state, ours = jax_run(sched, n, x0, kwargs, noises)
    if "karras" in name and cls is S.EulerDiscreteScheduler:  # fractional timesteps inherit ~1e-7 sigma rounding
        np.testing.assert_allclose(np.asarray(state.timesteps), ref_ts, rtol=1e-6)
    else:
        np.testing.assert_array_equal(np.asarray(state.timesteps), ref_ts)
    if hasattr(state, "sigmas"):
        np.testing.assert_allclose(np.asarray(state.sigmas), tsched.sigmas.numpy(), rtol=2e-6)
    np.testing.assert_allclose(float(sched.init_noise_sigma(state)), float(tsched.init_noise_sigma), rtol=1e-6)
    assert ours.shape == ref.shape
    scale = np.abs(ref).max(axis=tuple(range(1, ref.ndim)), keepdims=True)
    err = np.abs(ours - ref) / np.maximum(scale, 1.0)
    assert err.max() <= 1e-5, f"{name}: step {int(err.reshape(len(err), -1).max(1).argmax())}, err {err.max():.2e}"


@pytest.mark.parametrize("name", ["pndm-prk", "dpm-7"])
def test_fori_loop_and_state_carry(name):
    """A pipeline-style lax.fori_loop (state as carry) lands on diffusers' final sample."""
    cls, cfg, n, _ = CASES[name]
    tsched = TORCH[cls](**cfg)
    sched = cls.from_config(tsched.config)
    x0 = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    _, ref, _ = torch_run(tsched, n, x0, {})

    @jax.jit
    def sample(x):
        state = sched.set_timesteps(n, x.shape)

        def body(i, carry):
            x, state = carry
            mo = fake_jax(sched.scale_model_input(state, x, i), state.timesteps[i])
            return sched.step(state, mo, i, x)

        return jax.lax.fori_loop(0, state.timesteps.shape[0], body, (x, state))[0]

    np.testing.assert_allclose(np.asarray(sample(jnp.asarray(x0))), ref[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", list(TORCH))
def test_add_noise_parity(cls):
    tsched = TORCH[cls](**SD15)
    sched = cls.from_config(tsched.config)
    tsched.set_timesteps(10)
    state = sched.set_timesteps(10, SHAPE)
    rng = np.random.default_rng(2)
    x, noise = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
    if cls in (S.DDIMScheduler, S.PNDMScheduler):
        ts = np.array([0, 999], np.int64)
    else:  # these look timesteps up in the inference schedule (a repeated value takes its second match)
        ts = tsched.timesteps.numpy()[[0, 7]]
    ref = tsched.add_noise(torch.from_numpy(x), torch.from_numpy(noise), torch.from_numpy(ts)).numpy()
    ours = sched.add_noise(state, jnp.asarray(x), jnp.asarray(noise), jnp.asarray(ts))
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-6)


def test_training_add_noise_and_velocity():
    tsched = diffusers.DDIMScheduler(**SD15)
    ac = jnp.asarray(S.DDIMScheduler.from_config(tsched.config).alphas_cumprod())
    rng = np.random.default_rng(3)
    x, noise = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
    ts = np.array([3, 500], np.int64)
    args = (torch.from_numpy(x), torch.from_numpy(noise), torch.from_numpy(ts))
    np.testing.assert_allclose(
        np.asarray(S.add_noise(ac, x, noise, ts)), tsched.add_noise(*args).numpy(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(S.get_velocity(ac, x, noise, ts)), tsched.get_velocity(*args).numpy(), rtol=1e-5, atol=1e-6
    )


def test_from_pretrained_reads_diffusers_config(tmp_path):
    tsched = diffusers.PNDMScheduler(**SD15, skip_prk_steps=True, set_alpha_to_one=False)
    tsched.save_config(tmp_path / "scheduler")
    for folder in (tmp_path, tmp_path / "scheduler"):  # pipeline folder or the scheduler subfolder
        sched = S.load_scheduler(folder)
        assert isinstance(sched, S.PNDMScheduler) and sched.skip_prk_steps and sched.steps_offset == 1
    assert S.PNDMScheduler.from_pretrained(tmp_path) == sched
    with pytest.raises(ValueError, match="scheduler_config.json.*'PNDMScheduler'.*'DDIMScheduler'"):
        S.DDIMScheduler.from_pretrained(tmp_path)
    ddim = S.DDIMScheduler.from_pretrained(tmp_path, check_class=False)  # diffusers-style scheduler swap
    assert ddim.beta_schedule == "scaled_linear" and ddim.clip_sample  # clip_sample: DDIM's default
    # DPM's -inf lambda_min_clipped survives JSON, and our config is readable by diffusers.
    diffusers.DPMSolverMultistepScheduler(**SD15).save_config(tmp_path / "dpm")
    dpm = S.load_scheduler(tmp_path / "dpm")
    assert dpm.lambda_min_clipped == -np.inf
    back = diffusers.DPMSolverMultistepScheduler.from_config(json.loads(json.dumps(dpm.to_config())))
    back.set_timesteps(12)
    np.testing.assert_array_equal(np.asarray(dpm.set_timesteps(12, (1,)).timesteps), back.timesteps.numpy())


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="sample_shape"):
        S.PNDMScheduler().set_timesteps(10)
    with pytest.raises(NotImplementedError, match="sde-dpmsolver"):
        S.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    with pytest.raises(ValueError, match="key"):
        S.DDIMScheduler().step(S.DDIMScheduler().set_timesteps(4), jnp.zeros(3), 0, jnp.zeros(3), eta=1.0)
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "LMSDiscreteScheduler"}))
    with pytest.raises(ValueError, match="LMSDiscreteScheduler"):
        S.load_scheduler(tmp_path)
    with pytest.raises(FileNotFoundError):
        S.load_scheduler(tmp_path / "missing")
