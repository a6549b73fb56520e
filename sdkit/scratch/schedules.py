"""Noise schedules and the DDPM / DDIM update rules, written out so each line is one formula.

Notation (Ho et al. 2020): betas[t] is the noise added at step t, alphas_cumprod[t] ("alpha bar") is how much
of the clean image x0 survives to step t:

    x_t = sqrt(alphas_cumprod[t]) * x0 + sqrt(1 - alphas_cumprod[t]) * noise

Every function here is checked against diffusers' DDPMScheduler / DDIMScheduler in tests/test_scratch.py.
Timesteps `t` are integer tensors of shape (batch,) (or a plain int); per-sample coefficients are
broadcast over the (channels, height, width) dimensions.
"""
import math

import torch

# ----------------------------------------------------------------------------------------------
# Beta schedules: (num_steps,) float32 tensors


def linear_betas(num_steps=1000, beta_start=1e-4, beta_end=0.02):
    """The original DDPM schedule: betas rise linearly."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float32)


def scaled_linear_betas(num_steps=1000, beta_start=0.00085, beta_end=0.012):
    """Stable Diffusion's schedule: linear in sqrt(beta), then squared."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float32) ** 2


def cosine_betas(num_steps=1000, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal 2021: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2); betas follow from its ratios.

    The cap max_beta keeps the last steps from destroying the image in one jump (beta near 1)."""
    alpha_bar = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float32)


def sigmoid_betas(num_steps=1000, beta_start=1e-4, beta_end=0.02):
    """GeoDiff's schedule (diffusers' "sigmoid"): betas follow a sigmoid from beta_start to beta_end."""
    return torch.sigmoid(torch.linspace(-6, 6, num_steps)) * (beta_end - beta_start) + beta_start


BETA_SCHEDULES = {"linear": linear_betas, "scaled_linear": scaled_linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}


def make_betas(name, num_steps=1000):
    """Look up a schedule by name (diffusers' "squaredcos_cap_v2" is our "cosine")."""
    name = {"squaredcos_cap_v2": "cosine"}.get(name, name)
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; choose one of {list(BETA_SCHEDULES)}.")
    return BETA_SCHEDULES[name](num_steps)


def alphas_cumprod(betas):
    """alpha_bar[t] = prod_{s<=t} (1 - beta[s]): the fraction of signal variance left at step t."""
    return torch.cumprod(1.0 - betas, dim=0)


def snr(alphas_cumprod):
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar): huge at t=0, near 0 at the last step."""
    return alphas_cumprod / (1.0 - alphas_cumprod)


# ----------------------------------------------------------------------------------------------
# Forward process and the three ways a model can state its prediction


def _coef(values, t, like):
    """values[t] shaped (batch, 1, 1, 1) so it broadcasts against `like` (batch, channels, height, width)."""
    out = values.to(like.device)[torch.as_tensor(t, device=like.device)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(x0, t, noise, alphas_cumprod):
    """Jump straight to step t: x_t = sqrt(a_bar) x0 + sqrt(1 - a_bar) noise. (diffusers: add_noise)"""
    a = _coef(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def v_target(x0, noise, t, alphas_cumprod):
    """The v-prediction target (Salimans & Ho 2022): v = sqrt(a_bar) noise - sqrt(1 - a_bar) x0. (diffusers: get_velocity)"""
    a = _coef(alphas_cumprod, t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def eps_to_x0(x_t, eps, t, alphas_cumprod):
    """Undo q_sample given the noise: x0 = (x_t - sqrt(1 - a_bar) eps) / sqrt(a_bar)."""
    a = _coef(alphas_cumprod, t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def x0_to_eps(x_t, x0, t, alphas_cumprod):
    """The noise that takes x0 to x_t: eps = (x_t - sqrt(a_bar) x0) / sqrt(1 - a_bar)."""
    a = _coef(alphas_cumprod, t, x_t)
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def v_to_x0(x_t, v, t, alphas_cumprod):
    """x0 = sqrt(a_bar) x_t - sqrt(1 - a_bar) v."""
    a = _coef(alphas_cumprod, t, x_t)
    return a.sqrt() * x_t - (1 - a).sqrt() * v


def v_to_eps(x_t, v, t, alphas_cumprod):
    """eps = sqrt(1 - a_bar) x_t + sqrt(a_bar) v."""
    a = _coef(alphas_cumprod, t, x_t)
    return (1 - a).sqrt() * x_t + a.sqrt() * v


def predicted_x0_and_eps(model_output, x_t, t, alphas_cumprod, prediction_type="epsilon"):
    """Whatever the model predicts ("epsilon", "v_prediction" or "sample"), return (x0, eps)."""
    if prediction_type == "epsilon":
        return eps_to_x0(x_t, model_output, t, alphas_cumprod), model_output
    if prediction_type == "v_prediction":
        return v_to_x0(x_t, model_output, t, alphas_cumprod), v_to_eps(x_t, model_output, t, alphas_cumprod)
    if prediction_type == "sample":
        return model_output, x0_to_eps(x_t, model_output, t, alphas_cumprod)
    raise ValueError(f"prediction_type={prediction_type!r}; use 'epsilon', 'v_prediction' or 'sample' "
                     f"(the one your model was trained with: SD 1.5 uses 'epsilon', SD 2 768px uses 'v_prediction').")


# ----------------------------------------------------------------------------------------------
# Reverse steps: from x_t to x_prev. `t` and `prev_t` are plain ints here, shared by the whole batch.


def ddpm_step(model_output, t, x_t, alphas_cumprod, noise=None, prev_t=None, prediction_type="epsilon", clip_sample=None):
    """One DDPM ancestral step (Ho et al. eq. 6-7): sample x_prev ~ q(x_prev | x_t, predicted x0).

    noise: standard normal noise shaped like x_t (ignored at the last step); prev_t defaults to t - 1;
    clip_sample: clamp the predicted x0 to [-clip_sample, clip_sample] (diffusers' DDPMScheduler does this with 1.0 by default).
    """
    prev_t = t - 1 if prev_t is None else prev_t
    # 1. the alphas of this step and the previous one (a_bar before step 0 is 1: the clean image)
    a_t = alphas_cumprod[t]
    a_prev = alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    alpha_t = a_t / a_prev                # signal kept by the steps from prev_t to t
    beta_t = 1 - alpha_t
    # 2. the model's guess of the clean image
    x0, _ = predicted_x0_and_eps(model_output, x_t, t, alphas_cumprod, prediction_type)
    if clip_sample is not None:
        x0 = x0.clamp(-clip_sample, clip_sample)
    # 3. mean of the posterior q(x_prev | x_t, x0): a blend of the clean guess and the current sample
    mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + (alpha_t.sqrt() * (1 - a_prev) / (1 - a_t)) * x_t
    if t == 0:
        return mean                           # the last step adds no noise
    # 4. add noise with the posterior variance ("fixed_small": beta_tilde)
    variance = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
    if noise is None:
        raise ValueError("ddpm_step needs `noise` (torch.randn_like(x_t)) for every step but the last.")
    return mean + variance.sqrt() * noise


def ddim_step(model_output, t, prev_t, x_t, alphas_cumprod, eta=0.0, noise=None, prediction_type="epsilon", clip_sample=None):
    """One DDIM step (Song et al. eq. 12): deterministic when eta=0, DDPM-like when eta=1.

    Go from x_t to x_prev_t by re-noising the predicted x0 with the predicted noise direction."""
    # 1. alphas (after the last step a_bar is 1: diffusers' set_alpha_to_one=True)
    a_t = alphas_cumprod[t]
    a_prev = alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    # 2. predicted clean image and predicted noise
    x0, eps = predicted_x0_and_eps(model_output, x_t, t, alphas_cumprod, prediction_type)
    if clip_sample is not None:
        x0 = x0.clamp(-clip_sample, clip_sample)
    # 3. sigma_t: how much fresh noise to add (0 when eta=0)
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    # 4. x_prev = sqrt(a_prev) x0 + "direction pointing to x_t" + fresh noise
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs `noise` (torch.randn_like(x_t)).")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_timesteps(num_inference_steps, num_train_steps=1000):
    """The timesteps DDIM visits, high to low, evenly spaced (diffusers' "leading" spacing): 980, 960, ..., 0 for 50."""
    step = num_train_steps // num_inference_steps
    return list(range(0, num_inference_steps * step, step))[::-1]
