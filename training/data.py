"""Data preparation, done once before the loop so the text encoders and the VAE can be released:
the three prompts encoded, the image(s) resized and encoded to VAE posteriors (random crops are then taken in
latent space and a fresh posterior sample is drawn every step)."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..unziplora.kv_patch import match_length

MIN_IMAGE_SIDE = 64
# CLIP reads 77-token chunks (75 of the prompt's tokens each). 8 chunks = 600 tokens: several times any LoRA
# prompt, while each further chunk is one more pass of both text encoders (in the queue thread, where Interrupt
# cannot reach) and 77 more keys in every cross-attention. nodes.validate bounds the characters at queue time;
# this bounds the tokens (text of punctuation makes one token a character), after tokenizing, before encoding.
MAX_PROMPT_CHUNKS = 8


def tokenize_bounded(clip, text: str, input_name: str):
    """clip.tokenize(text), or ValueError naming the input when it would take more than MAX_PROMPT_CHUNKS."""
    tokens = clip.tokenize(text)
    # ComfyUI's tokenizers give {encoder: [chunk, ...]}; anything else (a stand-in in tests) is not counted
    chunks = max((len(v) for v in tokens.values() if isinstance(v, list)), default=0) if isinstance(tokens, dict) else 0
    if chunks > MAX_PROMPT_CHUNKS:
        raise ValueError(f"{input_name} is {chunks} of CLIP's 77-token chunks long: at most {MAX_PROMPT_CHUNKS} "
                         f"({MAX_PROMPT_CHUNKS * 75} tokens) are encoded; shorten it")
    return tokens


@dataclass
class PromptStreams:
    """Frozen embeddings of the combined (x), content (x_c) and style (x_s) prompts, equal length; pooled of x."""

    x: torch.Tensor
    x_c: torch.Tensor
    x_s: torch.Tensor
    pooled: torch.Tensor

    def to(self, device, dtype=None) -> "PromptStreams":
        return PromptStreams(*(t.to(device=device, dtype=dtype) for t in (self.x, self.x_c, self.x_s)),
                             self.pooled.to(device=device, dtype=dtype))


# Prompt encodings, remembered per CLIP object. A CPU encode of SDXL's two text encoders takes seconds, and runs
# mostly re-encode the same prompts with the same CLIP (another seed, another mode, a resume, Run after an edit,
# the previews' content / style prompts). ComfyUI never changes a CLIP's weights in place: a LoRA, a clip layer
# or a hook makes a clone (a new object, or new patches_uuid), so (object, patches_uuid, layer, tokenizer options,
# text) names one result, as ComfyUI's own cache assumes of CLIPTextEncode. Entries go with their CLIP object
# (weak keys); at most _ENCODED_PER_CLIP per CLIP (~0.6 MB each for a one-chunk prompt).
_ENCODED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ENCODED_PER_CLIP = 16
_ENCODED_LOCK = threading.Lock()


def encode_text(clip, text: str, input_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond [1, 77k, 2048], pooled [1, 1280]) of one prompt as float tensors, which callers must not change
    (they may be handed out again); tokens bounded as tokenize_bounded says."""
    tokens = tokenize_bounded(clip, text, input_name)
    options = getattr(clip, "tokenizer_options", None)
    key = (getattr(getattr(clip, "patcher", None), "patches_uuid", None), getattr(clip, "layer_idx", None),
           tuple(sorted(options.items())) if isinstance(options, dict) else None, text)
    with _ENCODED_LOCK:
        try:
            memo = _ENCODED.setdefault(clip, OrderedDict())
        except TypeError:  # not weakly referenceable (a stand-in): nothing is remembered
            memo = None
        if memo is not None and key in memo:
            memo.move_to_end(key)
            return memo[key]
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    value = (cond.detach().float().clone(), pooled.detach().float().clone())
    if memo is not None:
        with _ENCODED_LOCK:
            memo[key] = value
            while len(memo) > _ENCODED_PER_CLIP:
                memo.popitem(last=False)
    return value


def encode_prompts(clip, prompt: str, content_prompt: str, style_prompt: str) -> PromptStreams:
    for name, text in (("prompt", prompt), ("content_prompt", content_prompt), ("style_prompt", style_prompt)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name} is empty: give a prompt (e.g. 'A sks cat' / 'A cat in sketch style')")
    # every prompt's length is checked before any is encoded
    for name, text in (("combined_prompt", prompt), ("content_prompt", content_prompt), ("style_prompt", style_prompt)):
        tokenize_bounded(clip, text, name)
    (x, pooled), (c, _), (s, _) = (encode_text(clip, text, name) for name, text in (
        ("combined_prompt", prompt), ("content_prompt", content_prompt), ("style_prompt", style_prompt)))
    # the UNet's pooled vector is the combined prompt's only. Long prompts are 77 tokens per 75-word chunk. The
    # streams are aligned to the combined prompt the way the inference patch aligns them (kv_patch.match_length):
    # zero-padded, never longer, x itself untouched.
    x_c = match_length(c, x.shape[1], "content_prompt")
    x_s = match_length(s, x.shape[1], "style_prompt")
    return PromptStreams(x, x_c, x_s, pooled)


def check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a ComfyUI IMAGE batch [B, H, W, 3]; got {shape}")
    h, w = image.shape[1:3]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ValueError(f"image is {w}x{h} px: its shorter side must be at least {MIN_IMAGE_SIDE} px to crop")


def box_downscale(px: torch.Tensor, resolution: int) -> torch.Tensor:
    """[B, C, H, W] -> float, shrunk by a whole factor (a box filter: the mean of k x k pixels) to a shorter side
    of at most 2 x resolution. The antialiased bicubic resize after it then works on a small image: on the full
    one (an 8192 x 8192 photo at resolution 64) its blur held the queue for over 3 minutes and took 6.8 GB more.
    Averaging k x k blocks loses nothing the final resize keeps (it low-passes to the target anyway)."""
    k = min(px.shape[-2:]) // (2 * resolution)
    if k < 2:
        return px.float()
    # one image at a time: a batch of large views is never held twice over in float
    return torch.cat([torch.nn.functional.avg_pool2d(px[i:i + 1].float(), k, stride=k) for i in range(px.shape[0])])


def resize_short_side(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 -> [B, 3, H', W'] with the shorter side = resolution, both sides multiples
    of 8 (the VAE's factor), centre-trimmed."""
    import kornia

    px = box_downscale(image[..., :3].movedim(-1, 1), resolution)
    px = kornia.geometry.transform.resize(px, resolution, side="short", interpolation="bicubic", antialias=True)
    h, w = px.shape[-2:]
    h8, w8 = h - h % 8, w - w % 8
    top, left = (h - h8) // 2, (w - w8) // 2
    return px[..., top:top + h8, left:left + w8].clamp(0, 1)


@dataclass
class LatentPosteriors:
    """VAE posterior moments of each training image, already in the model's latent scale."""

    mean: torch.Tensor  # [N, C, h, w]
    std: torch.Tensor  # [N, C, h, w]; zero for a VAE without a posterior

    def sample_crop(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """One random image, one random size x size latent crop, one posterior sample: [1, C, size, size]."""
        n, _, h, w = self.mean.shape
        i = int(torch.randint(n, (1,), generator=generator))
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        sl = (slice(i, i + 1), slice(None), slice(top, top + size), slice(left, left + size))
        noise = torch.randn(self.mean[sl].shape, generator=generator)
        return self.mean[sl] + self.std[sl] * noise


@torch.no_grad()
def encode_posteriors(vae, image: torch.Tensor, resolution: int, latent_format) -> LatentPosteriors:
    """Encode once with ComfyUI's VAE. For a KL VAE the encoder's moments give mean and std; others are
    treated as deterministic. latent_format.process_in applies the model's scale (0.13025 for SDXL)."""
    import comfy.model_management as mm

    check_image(image)
    px = resize_short_side(image, resolution)
    mm.load_models_gpu([vae.patcher])
    fsm = vae.first_stage_model
    means, stds = [], []
    for k in range(px.shape[0]):
        x = vae.process_input(px[k:k + 1]).to(device=vae.device, dtype=vae.vae_dtype)
        quant_conv = getattr(fsm, "quant_conv", None)
        if hasattr(fsm, "encoder") and quant_conv is not None:
            moments = quant_conv(fsm.encoder(x)).float().cpu()
            mean, logvar = moments.chunk(2, dim=1)
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        else:
            mean = vae.encode(px[k:k + 1].movedim(1, -1)).float().cpu()
            std = torch.zeros_like(mean)
        # process_in is affine (scale, maybe shift): the std scales by the same factor
        scaled = latent_format.process_in(mean)
        scale = latent_format.process_in(torch.ones(1)) - latent_format.process_in(torch.zeros(1))
        means.append(scaled)
        stds.append(std * scale)
    return LatentPosteriors(torch.cat(means), torch.cat(stds))
