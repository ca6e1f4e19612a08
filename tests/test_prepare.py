"""Data preparation and input checks that need no server: crops, image batches, SDXL-shape refusal, names."""

from __future__ import annotations

import types

import pytest
import torch

from unziplora_pack.nodes.train import build_combined_prompt, check_name
from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.data import LatentPosteriors, check_image, encode_prompts, resize_short_side
from unziplora_pack.training.prepare import check_sdxl


def test_crops_come_from_every_image_of_a_batch_and_stay_inside():
    mean = torch.stack([torch.full((4, 12, 20), float(i)) for i in range(3)])
    post = LatentPosteriors(mean, torch.zeros_like(mean))
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(60):
        crop = post.sample_crop(8, g)
        assert crop.shape == (1, 4, 8, 8)
        seen.add(int(crop[0, 0, 0, 0]))
    assert seen == {0, 1, 2}, "each step must pick any image of the batch"


def test_posterior_sample_uses_the_std():
    post = LatentPosteriors(torch.zeros(1, 4, 8, 8), torch.full((1, 4, 8, 8), 2.0))
    crops = torch.cat([post.sample_crop(8, torch.Generator().manual_seed(i)) for i in range(20)])
    assert 1.6 < float(crops.std()) < 2.4


def test_resize_short_side_and_multiple_of_8():
    img = torch.rand(1, 300, 517, 3)
    px = resize_short_side(img, 128)
    assert px.shape[:2] == (1, 3) and min(px.shape[-2:]) == 128 and px.shape[-1] % 8 == 0
    assert 0.0 <= float(px.min()) and float(px.max()) <= 1.0


def test_image_checks_name_the_problem():
    with pytest.raises(ValueError, match="shorter side must be at least 64"):
        check_image(torch.rand(1, 32, 200, 3))
    with pytest.raises(ValueError, match=r"IMAGE batch \[B, H, W, 3\]"):
        check_image(torch.rand(32, 200, 3))


class _FakeClip:
    """Stands in for ComfyUI's CLIP: 77 tokens per 10 words, ones everywhere."""

    def tokenize(self, text):
        return text

    def encode_from_tokens(self, text, return_pooled=True):
        n = 77 * (1 + len(text.split()) // 10)
        return torch.ones(1, n, 8), torch.ones(1, 4)


def test_streams_are_padded_to_the_combined_prompt_which_stays_untouched():
    long = " ".join(["word"] * 12)
    s = encode_prompts(_FakeClip(), long, "A sks cat", "A cat in sketch style")
    assert s.x.shape == s.x_c.shape == s.x_s.shape == (1, 154, 8)
    assert float(s.x.sum()) == 154 * 8, "the combined prompt must not be padded"
    assert float(s.x_c[:, 77:].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="content_prompt prompt has 154 tokens"):
        encode_prompts(_FakeClip(), "A sks cat", long, "A cat in sketch style")
    with pytest.raises(ValueError, match="style_prompt is empty"):
        encode_prompts(_FakeClip(), "A sks cat", "A sks cat", "  ")


def test_non_sdxl_models_are_refused_by_name():
    sd15 = types.SimpleNamespace(model=types.SimpleNamespace(
        diffusion_model=types.SimpleNamespace(output_blocks=[]), encode_adm=None,
        model_config=types.SimpleNamespace(unet_config={"context_dim": 768, "adm_in_channels": None})))
    with pytest.raises(ValueError, match="context_dim 768.*SDXL-architecture"):
        check_sdxl(sd15)


def test_sdxl_shaped_tiny_model_is_accepted(tiny_sdxl):
    check_sdxl(tiny_sdxl)


@pytest.mark.parametrize("field, value, needle", [
    ("steps", 0, "steps"), ("rank", 0, "rank"), ("resolution", 100, "multiple of 64"),
    ("column_ratio", 1.5, "column_ratio"), ("mode", "dreambooth", "one of unziplora"),
    ("sample_times", 700, "selections"), ("steps", 1, "at least 2"),
])
def test_impossible_numbers_are_refused_with_the_input_named(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(**{field: value}).validate()


def test_names_and_the_combined_prompt():
    assert check_name(" cat_v2 ") == "cat_v2"
    for bad in ("../evil", "", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="name"):
            check_name(bad)
    assert build_combined_prompt("A sks cat", "A cat in sketch style") == "A sks cat in sketch style"
    assert build_combined_prompt("A sks cat", "watercolor") == "A sks cat, watercolor"


class _CountingClip:
    """A CLIP whose output depends on the text, counting its encodes; patcher.patches_uuid as ComfyUI's."""

    def __init__(self):
        self.encodes = 0
        self.patcher = types.SimpleNamespace(patches_uuid="p0")

    def tokenize(self, text):
        return text

    def encode_from_tokens(self, text, return_pooled=True):
        self.encodes += 1
        g = torch.Generator().manual_seed(sum(map(ord, text + self.patcher.patches_uuid)))
        return torch.randn(1, 77, 8, generator=g), torch.randn(1, 4, generator=g)


def test_a_prompt_is_encoded_once_per_clip_and_its_patches():
    """Runs re-encode the same prompts with the same CLIP (seeds, modes, resumes, the previews' content / style
    prompts): seconds each on a CPU. Each distinct (CLIP, patches, text) is encoded once, with the same result."""
    clip = _CountingClip()
    first = encode_prompts(clip, "A sks cat in sketch style", "A sks cat", "A cat in sketch style")
    assert clip.encodes == 3
    again = encode_prompts(clip, "A sks cat in sketch style", "A sks cat", "A cat in sketch style")
    assert clip.encodes == 3, "the same prompts were encoded again"
    from unziplora_pack.training.data import encode_text

    _, pooled = encode_text(clip, "A sks cat", "content_prompt")  # the preview's pooled content prompt
    assert clip.encodes == 3, "the preview's content prompt was encoded again"
    for a, b in zip((first.x, first.x_c, first.x_s, first.pooled), (again.x, again.x_c, again.x_s, again.pooled)):
        assert torch.equal(a, b)
    fresh = _CountingClip()
    assert torch.equal(pooled, fresh.encode_from_tokens("A sks cat")[1])

    encode_prompts(clip, "A sks dog in sketch style", "A sks dog", "A cat in sketch style")
    assert clip.encodes == 5  # two new texts; the style prompt is known
    clip.patcher.patches_uuid = "p1"  # a LoRA was added to this CLIP's patcher: everything is new
    changed = encode_prompts(clip, "A sks cat in sketch style", "A sks cat", "A cat in sketch style")
    assert clip.encodes == 8 and not torch.equal(changed.x, first.x)
    other = _CountingClip()  # another CLIP object (a clone, another checkpoint): its own encodes
    encode_prompts(other, "A sks cat in sketch style", "A sks cat", "A cat in sketch style")
    assert other.encodes == 3


def test_an_image_too_small_is_refused_before_any_prompt_is_encoded(tiny_sdxl, monkeypatch):
    from unziplora_pack.training import host_ram, prepare

    monkeypatch.setenv(host_ram.CHECK_ENV, "off")
    clip = _CountingClip()
    with pytest.raises(ValueError, match="shorter side must be at least 64"):
        prepare.prepare_inputs(tiny_sdxl, clip, object(), torch.rand(1, 32, 200, 3), "a sks cat in sketch style",
                               "a sks cat", "a cat in sketch style", TrainConfig(steps=4, sample_times=2),
                               device="cpu")
    assert clip.encodes == 0
