"""Training and previews follow the model's own prediction type and schedule (eps, v, zero terminal SNR).

The references are ComfyUI's: its model_sampling for the sigmas, calculate_input for what the UNet sees, and
calculate_denoised to confirm that the hand-written v target is the one ComfyUI's samplers decode.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tiny_models import build_tiny_sdxl, random_conditioning
from unziplora_pack.training import objective as objective_mod
from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.data import LatentPosteriors, PromptStreams
from unziplora_pack.training.loop import Trainer, TrainInputs, ddpm_alphas_cumprod
from unziplora_pack.training.model_copy import private_unet_copy
from unziplora_pack.training.objective import Objective
from unziplora_pack.training.previews import euler_sample

# seed 5: the first step draws t = 388
CFG = TrainConfig(steps=2, rank=4, resolution=64, sample_times=1, checkpoint_every=0, seed=5)
KINDS = [("eps", False), ("v", False), ("v", True)]


def _inputs(model) -> TrainInputs:
    unet, fp = private_unet_copy(model)
    x, pooled = random_conditioning(1)
    g = torch.Generator().manual_seed(4)
    post = LatentPosteriors(torch.randn(1, 4, 10, 12, generator=g), torch.full((1, 4, 10, 12), 0.1))
    adm = model.model.encode_adm(pooled_output=pooled, width=64, height=64, crop_w=0, crop_h=0, target_width=64,
                                 target_height=64)
    return TrainInputs(unet=unet, streams=PromptStreams(x, random_conditioning(2)[0], random_conditioning(3)[0], pooled),
                       posteriors=post, adm=adm.detach().clone(), base_fingerprint=fp,
                       objective=objective_mod.from_model(model))


class _Recording(Objective):
    """The run's objective, recording what each step noised: the test recomputes everything from these by hand."""

    def noised(self, x0, noise, t):
        self.calls.append((x0.clone(), noise.clone(), t))
        return super().noised(x0, noise, t)


@pytest.mark.parametrize("prediction,zsnr", KINDS)
def test_objective_reads_the_models_sampling(prediction, zsnr):
    model = build_tiny_sdxl(prediction=prediction, zsnr=zsnr)
    obj = objective_mod.from_model(model)
    ms = model.model.model_sampling
    assert (obj.prediction, obj.zsnr) == (prediction, zsnr)
    torch.testing.assert_close(obj.sigmas, ms.sigmas.double(), rtol=0, atol=0)
    a = obj.alphas_cumprod
    if zsnr:
        # zero terminal SNR: the last step is (numerically) pure noise, unlike SDXL's own schedule
        assert float(a[-1]) == pytest.approx(4.8973451890853435e-08, rel=1e-3)
        x0, noise = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        xt, target = obj.noised(x0, noise, 999)
        torch.testing.assert_close(xt, noise, rtol=0, atol=1e-3)
        torch.testing.assert_close(target, -x0, rtol=0, atol=1e-3)  # v at SNR 0 is minus the clean latent
    else:
        torch.testing.assert_close(a, ddpm_alphas_cumprod(), rtol=1e-6, atol=0)  # SDXL's scaled-linear betas


def test_objective_follows_a_model_sampling_node_and_refuses_other_samplers(tiny_sdxl):
    import comfy.model_sampling as ms

    class VZsnr(ms.ModelSamplingDiscrete, ms.V_PREDICTION):  # what ComfyUI's ModelSamplingDiscrete node patches in
        pass

    patched = tiny_sdxl.clone()
    patched.add_object_patch("model_sampling", VZsnr(tiny_sdxl.model.model_config, zsnr=True))
    obj = objective_mod.from_model(patched)
    assert (obj.prediction, obj.zsnr) == ("v", True) and obj.describe() == "v-prediction, zero terminal SNR"
    assert objective_mod.from_model(tiny_sdxl).prediction == "eps"  # the patch stays on the clone

    class X0(ms.ModelSamplingDiscrete, ms.X0):
        pass

    class EDM(ms.ModelSamplingContinuousEDM, ms.EDM):
        pass

    for bad, name in ((X0(tiny_sdxl.model.model_config), "X0"), (EDM(tiny_sdxl.model.model_config), "EDM")):
        m = tiny_sdxl.clone()
        m.add_object_patch("model_sampling", bad)
        with pytest.raises(ValueError, match=rf"model samples with .*{name}.*predict eps or v"):
            objective_mod.from_model(m)


@pytest.mark.parametrize("prediction,zsnr", KINDS)
def test_one_step_loss_is_the_mse_toward_the_models_own_target(prediction, zsnr):
    """The loss of a step, recomputed by hand from ComfyUI's model_sampling: the UNet's input is ComfyUI's
    calculate_input of x0 + sigma_t noise, the target is noise (eps) or alpha_t noise - sigma'_t x0 (v)."""
    model = build_tiny_sdxl(prediction=prediction, zsnr=zsnr)
    inputs = _inputs(model)
    obj = inputs.objective
    inputs.objective = _Recording(obj.prediction, obj.sigmas, obj.zsnr)
    inputs.objective.calls = []
    seen = []
    pre = inputs.unet.register_forward_pre_hook(lambda m, args: seen.append([args[0].clone(), args[1].clone()]))
    post = inputs.unet.register_forward_hook(lambda m, args, out: seen[-1].append(out.detach().clone()))
    try:
        result = Trainer(inputs, CFG).run()
    finally:
        pre.remove()
        post.remove()
    (x0, noise, t), *_ = inputs.objective.calls
    unet_in, timestep, out = seen[0]
    assert t == 388 and float(timestep) == t

    ms = model.model.model_sampling  # ComfyUI's, not the pack's
    sigma = ms.sigmas[t]
    torch.testing.assert_close(unet_in, ms.calculate_input(sigma, x0 + sigma * noise), rtol=1e-5, atol=1e-6)
    alpha, sigma_p = 1 / math.sqrt(1 + float(sigma) ** 2), float(sigma) / math.sqrt(1 + float(sigma) ** 2)
    target = noise if prediction == "eps" else alpha * noise - sigma_p * x0
    # the target is the one ComfyUI decodes back to the clean latent, for the model's own parametrisation
    torch.testing.assert_close(ms.calculate_denoised(sigma, target, x0 + sigma * noise), x0, rtol=1e-4, atol=1e-4)
    hand = F.mse_loss(out.float(), target).item()
    assert result.losses[0] == pytest.approx(hand, rel=1e-5)
    if prediction == "v":
        eps_loss = F.mse_loss(out.float(), noise).item()
        # an eps target would miss the 1e-5 above by far more: this step tells the two apart
        assert abs(eps_loss - hand) > 1e-3 * hand


def test_resume_refuses_a_checkpoint_of_another_prediction_type(tmp_path):
    from unziplora_pack.training.jobs import JobCancelled

    eps_model = build_tiny_sdxl()
    saved = []
    with pytest.raises(JobCancelled):
        Trainer(_inputs(eps_model), CFG, checkpoint_dir=str(tmp_path)).run(
            should_stop=iter([False, True]).__next__, on_checkpoint=saved.append)
    v_inputs = _inputs(eps_model)
    v_inputs.objective = Objective("v", v_inputs.objective.sigmas)
    with pytest.raises(ValueError, match="trained for epsilon .*, this model uses v-prediction: resume"):
        Trainer(v_inputs, CFG, checkpoint_dir=str(tmp_path)).run(resume_from=saved[0])


def _comfy_euler(model_fn, ms, steps, cfg, generator, shape):
    """ComfyUI's own Euler step (k-diffusion's to_d on model_sampling.calculate_denoised), on the preview's grid."""
    ts = torch.linspace(999, 0, steps).round().long()
    sigmas = [ms.sigmas[t] for t in ts] + [torch.tensor(0.0)]
    x = torch.randn(shape, generator=generator) * sigmas[0]
    for i, t in enumerate(ts):
        s = sigmas[i]
        out_c, out_u = model_fn(ms.calculate_input(s, x), torch.full((1,), float(t)))
        denoised = ms.calculate_denoised(s, out_u + cfg * (out_c - out_u), x)
        x = x + (x - denoised) / s * (sigmas[i + 1] - s)
    return x


@pytest.mark.parametrize("prediction,zsnr", KINDS)
def test_preview_sampler_is_comfyuis_euler_for_the_models_parametrisation(prediction, zsnr):
    """Previews step like ComfyUI's Euler sampler on the model's own model_sampling (read as the other
    parametrisation, the same outputs end elsewhere), and with a model that predicts its target exactly they end on
    the clean latent."""
    model = build_tiny_sdxl(prediction=prediction, zsnr=zsnr)
    ms, obj = model.model.model_sampling, objective_mod.from_model(model)
    g = torch.Generator().manual_seed(3)
    pattern_c, pattern_u, x0 = torch.randn(3, 1, 4, 8, 8, generator=g)

    def some_model(xt, t):
        return 0.3 * xt + pattern_c, 0.2 * xt + pattern_u

    def run(fn, o):
        return euler_sample(fn, x0.shape, o, 6, 5.0, torch.Generator().manual_seed(0), "cpu", torch.float32)

    ref = _comfy_euler(some_model, ms, 6, 5.0, torch.Generator().manual_seed(0), x0.shape)
    scale = ref.abs().max()
    assert ((run(some_model, obj) - ref).abs().max() / scale).item() < 1e-4
    other = Objective("v" if prediction == "eps" else "eps", obj.sigmas, obj.zsnr)
    assert ((run(some_model, other) - ref).abs().max() / scale).item() > 0.05

    def exact(xt, t):
        a = float(obj.alphas_cumprod[int(t)])
        eps = (xt - math.sqrt(a) * x0) / math.sqrt(1 - a)
        out = eps if prediction == "eps" else math.sqrt(a) * eps - math.sqrt(1 - a) * x0
        return out, out

    torch.testing.assert_close(run(exact, obj), x0, rtol=0, atol=1e-3)
