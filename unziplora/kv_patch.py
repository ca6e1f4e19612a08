"""Prompt separation in cross-attention, delivered through ComfyUI's own attention replace patches.

    K = W0 x + (m_c M_c) . (B_c A_c x_c) + (m_s M_s) . (B_s A_s x_s)        (V alike)

x is the combined prompt (ComfyUI's c_crossattn), x_c / x_s the content / style prompts. Inference: x_c and
x_s ride on each CONDITIONING entry as model_conds (ComfyUI repeats them to the batch and concatenates
them across cond/uncond exactly as it does c_crossattn, so they stay batch-aligned in any order or split);
an APPLY_MODEL wrapper moves them into a copy of transformer_options, where the attn2 replace patch of each
transformer block reads them. The K/V deltas depend on the prompts alone, so at inference they are computed
once per conditioning batch and reused at every step (StreamsWrapper). Training builds the same
transformer_options by hand, without that cache, and calls the UNet.
Only the attn2 K/V deltas live here; every other LoRA linear sees the image tokens only, so its delta is a
static weight patch (inference) or a forward hook (training, content_style.attach).
"""

from __future__ import annotations

import copy

import torch

from .content_style import ContentStyleLoRA
from .dual_lora import DualLoRA
from .targets import unet_of

STREAMS_KEY = "unziplora_streams"  # transformer_options entry read by the patches
CONTENT_COND = "unziplora_content"  # model_conds keys: they become BaseModel.apply_model kwargs
STYLE_COND = "unziplora_style"
KEY_COND = "unziplora_key"  # the combined tokens the streams were made for: aligns them after Concat & co.
WRAPPER_KEY = "unziplora"
CACHE_ENTRIES = 4  # distinct conditioning batches kept per sampling run (cond+uncond, or each apart when split)


# -- streams -----------------------------------------------------------------------------------------
def match_length(stream: torch.Tensor, length: int, name: str) -> torch.Tensor:
    """Zero-pad a prompt stream to `length` tokens: a zero token adds a zero delta to K and V.

    A stream longer than the combined prompt cannot be aligned with it (padding x would change the base
    attention), so that is refused.
    """
    n = stream.shape[1]
    if n == length:
        return stream
    if n > length:
        raise ValueError(f"UnZipLoRA: the {name} prompt has {n} tokens but the combined prompt has {length}; "
                         "the combined prompt must be at least as long (it normally contains both)")
    pad = stream.new_zeros(stream.shape[0], length - n, *stream.shape[2:])
    return torch.cat([stream, pad], dim=1)


def _match_batch(stream: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if stream.shape[0] == batch:
        return stream
    if stream.shape[0] == 1:
        return stream.expand(batch, *stream.shape[1:])
    raise ValueError(f"UnZipLoRA: the {name} stream has batch {stream.shape[0]}, the combined prompt {batch}")


def prepare_streams(x: torch.Tensor, content: torch.Tensor | None = None, style: torch.Tensor | None = None,
                    device=None, dtype=None) -> dict:
    """The transformer_options entry: x plus content / style streams padded and batch-aligned to x.

    A missing stream means no separation for that LoRA (it reads x, an ordinary LoRA).
    """
    x = x.to(device=device or x.device, dtype=dtype or x.dtype)
    out = {"x": x, "content": None, "style": None}
    for name, s in (("content", content), ("style", style)):
        if s is not None:
            s = _match_batch(match_length(s, x.shape[1], name), x.shape[0], name)
            out[name] = s.to(device=x.device, dtype=x.dtype)
    return out


def _tile(t: torch.Tensor, length: int) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    reps = -(-length // t.shape[1])
    return t.repeat(1, reps, 1)[:, :length]


def align_streams(context: torch.Tensor, key: torch.Tensor | None, content: torch.Tensor | None,
                  style: torch.Tensor | None) -> tuple:
    """(content, style) token-aligned with the batched context, using `key` (the tokens each stream was made for).

    ComfyUI batches every CONDCrossAttn on its own, repeating shorter ones to a common length, and nodes such as
    ConditioningConcat or ConditioningAverage change c_crossattn after the streams were attached. Repeating the
    key exactly as the streams were repeated and comparing it with the context token by token finds, for every
    context token, whether the streams belong to it; a token they do not belong to (appended or averaged after
    UnZipLoRA Prompts) gets no separation: its content / style streams are the token itself.
    """
    if key is None or (content is None and style is None):
        return content, style
    length = context.shape[1]
    key = _tile(key.to(context.dtype), length)
    if key.shape == context.shape and torch.equal(key, context):
        return (None if content is None else _tile(content, length)), (None if style is None else _tile(style, length))
    same = (key == context).all(dim=-1, keepdim=True)
    out = []
    for s in (content, style):
        out.append(None if s is None else torch.where(same, _tile(s, length).to(context.dtype), context))
    return tuple(out)


# -- the patch ---------------------------------------------------------------------------------------
class KVPatch:
    """attn2 replace patch of one transformer block: add the dual LoRA deltas to k and v, then attend.

    Not an nn.Module and with a no-op `.to`: ComfyUI deep-copies model_options on every clone() and calls
    `.to(device)` / `.to(dtype)` on patches; both would copy or cast the shared (trainable) Parameters.
    The deltas cast the factors to k's device and dtype on the fly instead.

    Patches applied after ours: IPAdapter (and nodes that follow its convention) do not replace a patch they find
    in the slot but call `slot.add(callback, **kwargs)` on it, expecting `callback(out, q, k, v, extra_options,
    **kwargs)` to be added to the attention output while the sampling sigma lies in [sigma_end, sigma_start]
    (when those are given). `add` forwards to the wrapped patch when it has its own `add`, else keeps the
    callback here; either way attention runs on the K/V with our deltas, as when such a patch came first. A clone
    copies this object (sharing the LoRA), so a callback added on a clone never reaches the model it came from.
    """

    def __init__(self, to_k: DualLoRA | None, to_v: DualLoRA | None, previous=None, owner=None):
        self.to_k = to_k
        self.to_v = to_v
        self.previous = previous  # another replace patch that was in this slot (e.g. IPAdapter): wrapped
        self.owner = owner
        self.added: list[tuple] = []  # (callback, kwargs) added after ours (see the class docstring)

    def __deepcopy__(self, memo):
        out = copy.copy(self)  # the same LoRA factors: never copied
        out.previous = copy.deepcopy(self.previous, memo)
        out.added = list(self.added)
        return out

    def add(self, callback, **kwargs) -> None:
        """An attention patch applied on top of ours, IPAdapter's way (see the class docstring)."""
        if not callable(callback):
            raise TypeError(f"UnZipLoRA: another node added {type(callback).__name__!r} to an attention slot that "
                            "UnZipLoRA Apply patched; expected a callback(out, q, k, v, extra_options, **kwargs). "
                            "Apply that node before UnZipLoRA Apply instead")
        if self.previous is not None and callable(getattr(self.previous, "add", None)):
            self.previous.add(callback, **kwargs)
        else:
            self.added.append((callback, kwargs))

    def _run_added(self, out, q, k, v, extra_options):
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.detach().flatten()[0]) if isinstance(sigmas, torch.Tensor) and sigmas.numel() else None
        for callback, kwargs in self.added:
            if sigma is not None and not (kwargs.get("sigma_end", -float("inf")) <= sigma
                                          <= kwargs.get("sigma_start", float("inf"))):
                continue
            out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out

    def to(self, *args, **kwargs):
        if self.previous is not None and hasattr(self.previous, "to"):
            self.previous = self.previous.to(*args, **kwargs)
        return self

    def _delta(self, dual: DualLoRA | None, streams: dict, like: torch.Tensor):
        if dual is None:
            return None
        cache = streams.get("cache")
        state = None if cache is None else _state_key(dual, like)
        if state is not None:
            hit = cache.get(id(dual))
            if hit is not None and hit[0] is dual and hit[1] == state:
                return hit[2]
        cast = [None if s is None else s.to(device=like.device, dtype=like.dtype)
                for s in (streams["x"], streams["content"], streams["style"])]
        delta = dual.delta(*cast)
        if state is not None:
            cache[id(dual)] = (dual, state, delta)
        return delta

    def __call__(self, q, k, v, extra_options):
        streams = extra_options.get(STREAMS_KEY)
        if streams is None:
            raise RuntimeError("UnZipLoRA K/V patch ran without its prompt streams: install it with "
                               "kv_patch.install() or pass kv_patch.training_transformer_options()")
        x = streams["x"]
        if x.shape[:2] != k.shape[:2]:
            raise ValueError(f"UnZipLoRA: cross-attention context is {tuple(k.shape[:2])} (batch, tokens) but the "
                             f"prompt streams are {tuple(x.shape[:2])}; another patch changed the context?")
        dk = self._delta(self.to_k, streams, k)
        dv = self._delta(self.to_v, streams, v)
        if dk is not None:
            k = k + dk
        if dv is not None:
            v = v + dv
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            import comfy.ldm.modules.attention as attention  # looked up per call: ComfyUI picks it at start-up

            out = attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                                attn_precision=extra_options.get("attn_precision"),
                                                transformer_options=extra_options)
        return self._run_added(out, q, k, v, extra_options) if self.added else out


def kv_patches(lora: ContentStyleLoRA, existing: dict | None = None) -> dict[tuple, KVPatch]:
    """One KVPatch per transformer block with attn2 K/V LoRAs, wrapping what `existing` has in the slot.

    ComfyUI looks a slot up as (block, number, index) first, then (block, number): a patch under the
    shorter key would be shadowed by ours, so it is wrapped too.
    """
    existing = existing or {}
    out = {}
    for key, duals in lora.kv_slots().items():
        prev = existing.get(key, existing.get(key[:2]))
        out[key] = KVPatch(duals.get("to_k"), duals.get("to_v"), prev, owner=lora)
    return out


# -- inference: ModelPatcher ---------------------------------------------------------------------------
def _model_dtype(base_model):
    dtype = getattr(base_model, "manual_cast_dtype", None)
    return dtype if dtype is not None else base_model.get_dtype()


def _state_key(dual, like: torch.Tensor):
    """What a cached K/V delta depends on besides the streams; None: do not cache.

    The K/V deltas depend only on the prompt tokens, never on the image, so within a sampling run they are the
    same at every step. A trainable DualLoRA may change between runs (previews of a live LoRA): its tensors'
    version counters are part of the key. Other duals (unziplora.apply's) are immutable once built.
    """
    base = (like.dtype, like.device)
    if not isinstance(dual, torch.nn.Module):
        return base
    try:
        return base + (dual.masks_on,) + tuple(t._version for t in (*dual.parameters(), *dual.buffers()))
    except RuntimeError:  # inference tensors keep no version counter: never cache them
        return None


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


class StreamsWrapper:
    """APPLY_MODEL wrapper: model_conds streams -> a shallow copy of transformer_options.

    The copy keeps the streams of this call out of the dict ComfyUI reuses for the next batch. Streams equal to
    those of an earlier call reuse that call's dict, and with it the K/V deltas the patches cached in it: the
    prompts are constant over a sampling run, so the deltas are computed once per conditioning batch rather than
    at every step. An OUTER_SAMPLE wrapper drops the cache when sampling ends. Shared, not copied, by clone().
    """

    def __init__(self):
        self.entries: list[tuple[tuple, dict]] = []

    def __deepcopy__(self, memo):
        return self

    def clear(self) -> None:
        self.entries = []

    def streams(self, context, key, content, style, device, dtype) -> dict:
        inputs = (context, key, content, style)
        for i, (seen, streams) in enumerate(self.entries):
            if (streams["x"].device, streams["x"].dtype) == (device, dtype) and all(map(_same, inputs, seen)):
                self.entries.insert(0, self.entries.pop(i))
                return streams
        content, style = align_streams(context, key, content, style)
        streams = prepare_streams(context, content, style, device=device, dtype=dtype)
        streams["cache"] = {}
        self.entries = [(inputs, streams)] + self.entries[:CACHE_ENTRIES - 1]
        return streams

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        content = kwargs.pop(CONTENT_COND, None)
        style = kwargs.pop(STYLE_COND, None)
        key = kwargs.pop(KEY_COND, None)
        options = dict(transformer_options or {})
        if c_crossattn is not None:
            options[STREAMS_KEY] = self.streams(c_crossattn, key, content, style, x.device,
                                                _model_dtype(executor.class_obj))
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)

    def outer_sample(self, executor, *args, **kwargs):
        try:
            return executor(*args, **kwargs)
        finally:
            self.clear()


def install(model_patcher, lora: ContentStyleLoRA, *, static: bool = True):
    """A clone of `model_patcher` running `lora`: the one way the pack puts the LoRA pair into ComfyUI.

    `lora` is a ContentStyleLoRA or anything with its inference surface: `targets`, `merged_factors(path)` and
    `kv_slots()` whose duals have `delta(x, x_c, x_s)` (unziplora.apply.InferencePair, built from files).

    static: also add every other LoRA linear's delta (current masks and mergers, snapshot at this call) as
    ordinary ComfyUI LoRA weight patches; attn2 K/V always stay live in the replace patches.
    """
    import comfy.patcher_extension
    from comfy.weight_adapter.lora import LoRAAdapter

    slot = model_patcher.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    if any(isinstance(p, KVPatch) and p.owner is lora for p in slot.values()):
        # the static weight patches would be added a second time
        raise ValueError("UnZipLoRA: this LoRA pair is already installed on this model; install on the original")
    m = model_patcher.clone()
    if static:
        patches = {}
        for path, t in lora.targets.items():
            factors = None if t.is_cross_kv else lora.merged_factors(path)
            if factors is not None:
                up, down = (f.clone() for f in factors)
                patches[t.weight_key] = LoRAAdapter(set(), (up, down, None, None, None, None))
        missing = set(patches) - set(m.add_patches(patches, 1.0))
        if missing:
            raise ValueError(f"UnZipLoRA: {len(missing)} LoRA weights not found in the model, e.g. {min(missing)}")
    for key, patch in kv_patches(lora, slot).items():
        m.set_model_attn2_replace(patch, *key)
    wrapper = StreamsWrapper()
    kinds = comfy.patcher_extension.WrappersMP
    for kind, fn in ((kinds.APPLY_MODEL, wrapper), (kinds.OUTER_SAMPLE, wrapper.outer_sample)):
        m.remove_wrappers_with_key(kind, WRAPPER_KEY)
        m.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
    return m


def _as_tensor(stream):
    """A stream given as a tensor or as a CONDITIONING list (its first entry's tokens)."""
    if isinstance(stream, (list, tuple)):
        return stream[0][0]
    return stream


def with_streams(conditioning, content, style):
    """A copy of a CONDITIONING list whose entries carry the content and style prompt streams.

    Padded per entry to the entry's own length, so ComfyUI's repeat-to-common-length on batching treats
    x, x_c and x_s alike; x itself rides along as the key that re-aligns them if a later node changes the
    entry's tokens (align_streams).
    """
    import comfy.conds

    content, style = _as_tensor(content), _as_tensor(style)
    out = []
    for x, opts in conditioning:
        model_conds = dict(opts.get("model_conds", {}))
        model_conds[CONTENT_COND] = comfy.conds.CONDCrossAttn(match_length(content, x.shape[1], "content"))
        model_conds[STYLE_COND] = comfy.conds.CONDCrossAttn(match_length(style, x.shape[1], "style"))
        model_conds[KEY_COND] = comfy.conds.CONDCrossAttn(x)
        out.append([x, {**opts, "model_conds": model_conds}])
    return out


def with_zero_streams(conditioning, zero_main: bool = False):
    """Zero content / style streams: the method's unconditional branch. It also gives uncond the same
    model_conds keys as cond, which ComfyUI needs to batch the two together.

    zero_main: the tokens and the pooled vector are zero too (size conditioning stays), which is what the authors'
    diffusers pipeline feeds for an absent negative prompt (SDXL's force_zeros_for_empty_prompt).
    """
    out = []
    for x, opts in conditioning:
        zeros = torch.zeros_like(x)
        if zero_main:
            x = zeros
            if opts.get("pooled_output") is not None:
                opts = {**opts, "pooled_output": torch.zeros_like(opts["pooled_output"])}
        out += with_streams([[x, opts]], zeros, zeros)
    return out


# -- training: a private UNet -------------------------------------------------------------------------
def _pytorch_attention(func, *args, **kwargs):
    import comfy.ldm.modules.attention as attention

    return attention.attention_pytorch(*args, **kwargs)


def training_transformer_options(lora: ContentStyleLoRA, context: torch.Tensor, content=None, style=None, *,
                                 pytorch_attention: bool = True) -> dict:
    """transformer_options for a UNet forward with the K/V patches and streams (fresh dict per forward:
    the UNet writes into it).

    pytorch_attention: route every attention through attention_pytorch (sage / flash may lack a backward).
    """
    options = {"patches_replace": {"attn2": kv_patches(lora)}, STREAMS_KEY: prepare_streams(context, content, style)}
    if pytorch_attention:
        options["optimized_attention_override"] = _pytorch_attention
    return options


def sdxl_y(base_model, pooled: torch.Tensor, time_ids=(1024, 1024, 0, 0, 1024, 1024)) -> torch.Tensor:
    """SDXL's vector conditioning: pooled CLIP-G + embedded (orig h, orig w, crop top, crop left, target h, w)."""
    h, w, top, left, th, tw = time_ids
    return base_model.encode_adm(pooled_output=pooled, height=h, width=w, crop_h=top, crop_w=left,
                                 target_height=th, target_width=tw)


def predict_eps(model, lora: ContentStyleLoRA, latent: torch.Tensor, timesteps: torch.Tensor,
                context: torch.Tensor, y: torch.Tensor, content=None, style=None, *,
                pytorch_attention: bool = True) -> torch.Tensor:
    """One training forward of a private UNet with `lora` attached: epsilon for a DDPM-noised latent.

    timesteps: DDPM steps 0..999 (float or int, shape [B]); context: combined prompt [B, L, 2048];
    y: sdxl_y(...); content / style: the other prompts' tokens (None = the combined prompt).
    """
    unet = unet_of(model)
    if not lora.is_attached_to(unet):
        raise RuntimeError("predict_eps: attach the LoRA to this UNet first (lora.attach(unet))")
    dtype = unet.dtype
    options = training_transformer_options(lora, context.to(dtype), content, style,
                                           pytorch_attention=pytorch_attention)
    return unet(latent.to(dtype), timesteps.float(), context=options[STREAMS_KEY]["x"], y=y.to(dtype),
                transformer_options=options)
