"""What the UNet is trained to predict, read off the model's own `model_sampling`.

SDXL finetunes differ here: SDXL base and most finetunes predict the noise (eps); NoobAI's v-pred checkpoints and
other anime models predict v = sqrt(a) noise - sqrt(1 - a) x0, some over a zero-terminal-SNR schedule (the last
step is pure noise). ComfyUI encodes both in the model's `model_sampling` (the checkpoint's "v_pred" / "ztsnr"
keys, or a ModelSamplingDiscrete node upstream), and samples with it: a LoRA trained toward another target or on
another schedule fits some other model. So training noises with that object's sigmas and regresses its target,
and previews sample through the same object.

The noising is DDPM's, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise with a_t = 1 / (1 + sigma_t^2): exactly what
ComfyUI's model sees at sigma_t (calculate_input scales x0 + sigma_t noise by 1 / sqrt(1 + sigma_t^2)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PREDICTIONS = {"eps": "epsilon (noise) prediction", "v": "v-prediction"}


@dataclass(frozen=True, eq=False)
class Objective:
    prediction: str  # "eps" | "v"
    sigmas: torch.Tensor  # [T] float64: the model's sigma per discrete timestep, ascending
    zsnr: bool = False

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}; got {self.prediction!r}")

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return 1.0 / (1.0 + self.sigmas.double() ** 2)

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    def describe(self) -> str:
        """For messages and job info: 'v-prediction, zero terminal SNR'."""
        return describe_state(self.state())

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the UNet's input at timestep t, the target its output regresses)."""
        a = float(self.alphas_cumprod[t])
        xt = math.sqrt(a) * x0 + math.sqrt(1.0 - a) * noise
        if self.prediction == "eps":
            return xt, noise
        return xt, math.sqrt(a) * noise - math.sqrt(1.0 - a) * x0

    def to_eps(self, output: torch.Tensor, xt: torch.Tensor, t: int) -> torch.Tensor:
        """The noise the model's output implies for input xt at timestep t (what an Euler step in sigma space
        moves along): the output itself for eps, sqrt(a) v + sqrt(1 - a) x_t for v."""
        if self.prediction == "eps":
            return output
        a = float(self.alphas_cumprod[t])
        return math.sqrt(a) * output + math.sqrt(1.0 - a) * xt

    def state(self) -> dict:
        """What a checkpoint records: a resumed run must keep the same target and schedule."""
        return {"prediction": self.prediction, "zsnr": self.zsnr, "sigma_max": float(self.sigmas[-1]),
                "timesteps": self.num_timesteps}


def describe_state(state: dict) -> str:
    """Objective.state() (e.g. read from a checkpoint) in words."""
    return PREDICTIONS.get(state.get("prediction"), str(state.get("prediction"))) + (
        ", zero terminal SNR" if state.get("zsnr") else "")


def ddpm_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """SDXL's scaled-linear schedule: betas linear in sqrt space."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sdxl_default() -> Objective:
    """SDXL base: eps over the scaled-linear schedule (what the paper trained); for inputs made without a model."""
    a = ddpm_alphas_cumprod()
    return Objective("eps", ((1 - a) / a).sqrt())


def _model_sampling(model):
    """The model_sampling a sampler would use: a ModelPatcher's object patches (ModelSamplingDiscrete node) win."""
    get = getattr(model, "get_model_object", None)
    if get is not None:
        return get("model_sampling")
    base = getattr(model, "model", model)
    return getattr(base, "model_sampling", None)


def from_model(model) -> Objective:
    """The objective of a ModelPatcher or BaseModel; ValueError naming what the model samples with otherwise."""
    import comfy.model_sampling as ms_mod

    ms = _model_sampling(model)
    if ms is None:
        raise ValueError("model has no model_sampling: connect a diffusion model (MODEL) from a checkpoint loader")
    cls = type(ms)
    kinds = {ms_mod.EPS.calculate_denoised: "eps", ms_mod.V_PREDICTION.calculate_denoised: "v"}
    prediction = kinds.get(getattr(cls, "calculate_denoised", None))
    if getattr(cls, "calculate_input", None) is not ms_mod.EPS.calculate_input:
        prediction = None  # noised() feeds x_t scaled by 1 / sqrt(1 + sigma^2), as EPS / V_PREDICTION do
    # the discrete schedule maps sigma <-> timestep index; EDM / continuous / LCM / flow samplers map differently
    discrete = (isinstance(ms, ms_mod.ModelSamplingDiscrete)
                and getattr(cls, "timestep", None) is ms_mod.ModelSamplingDiscrete.timestep)
    if prediction is None or not discrete:
        names = ", ".join(c.__name__ for c in cls.__mro__[1:] if c.__module__.startswith("comfy"))
        raise ValueError(f"model samples with {names or cls.__name__}: UnZipLoRA trains SDXL models that predict "
                         "eps or v over a discrete 1000-step schedule (SDXL, Pony, Illustrious, NoobAI eps and v-pred, "
                         "zero terminal SNR included); remove ModelSampling nodes other than ModelSamplingDiscrete "
                         "eps / v_prediction before UnZipLoRA Train")
    sigmas = ms.sigmas.detach().to("cpu", torch.float64).clone()
    return Objective(prediction, sigmas, zsnr=bool(getattr(ms, "zsnr", False)))
