"""CLIP-I alignment of generated samples with the training image (the paper's style metric), per sample.

CLIP-I is the cosine similarity of CLIP image embeddings. The model is the user's CLIP_VISION (ComfyUI's
comfy.clip_vision.ClipVisionModel, its own preprocessing and device handling): the score of a sample is its
embedding's cosine with the reference's (the mean cosine over the reference images when several are given).
Samples of one kind come as a batch whose index is a run or a seed, so rows of the table line up across kinds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("style", "content", "combined")
# what each kind's samples should resemble in the training image, for the table's header
WHAT = {"style": "style-only samples", "content": "content-only samples", "combined": "combined samples"}
CHUNK = 16  # images per encode_image call: bounds activation memory on big batches
# what one table may hold: rows are drawn (32 px each) and every image is encoded; labels are drawn in a column
MAX_ROWS = 64
MAX_REFERENCES = 16
MAX_LABEL_CHARS = 40
NAN_CELL = "NaN image"


def embed(clip_vision, images: torch.Tensor, crop: bool = True) -> torch.Tensor:
    """[N, H, W, C] images in 0..1 -> [N, D] unit-length embeddings (the projected image_embeds)."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"expected an IMAGE batch [N, H, W, 3], got shape {tuple(images.shape)}")
    out = []
    for start in range(0, images.shape[0], CHUNK):
        encoded = clip_vision.encode_image(images[start:start + CHUNK], crop=crop)
        e = encoded["image_embeds"]
        out.append(e.detach().float().reshape(e.shape[0], -1).cpu())
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def finite_images(images: torch.Tensor) -> torch.Tensor:
    """[N] bool: the images whose pixels are all finite (an fp16 VAE decode can give NaN images)."""
    return torch.isfinite(images.reshape(images.shape[0], -1)).all(dim=1)


def clip_i(clip_vision, reference: torch.Tensor, samples: torch.Tensor, crop: bool = True) -> torch.Tensor:
    """[N] cosine of each sample with the reference image(s); NaN for a sample with non-finite pixels (it is not
    encoded: CLIP would turn it into a NaN embedding, and the cosine into a NaN score that looks like a number)."""
    ref = embed(clip_vision, reference, crop)
    ok = finite_images(samples)
    out = torch.full((samples.shape[0],), float("nan"))
    if ok.any():
        out[ok] = (embed(clip_vision, samples[ok], crop) @ ref.T).mean(dim=1)
    return out


def check_batch(input_name: str, images, limit: int) -> None:
    """ValueError naming the input unless it is a ComfyUI IMAGE batch of 1..limit images."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{input_name} is not an IMAGE batch [N, H, W, 3] (got {shape}): connect images")
    if images.shape[0] == 0:
        raise ValueError(f"{input_name} is an empty batch: connect at least one image")
    if images.shape[0] > limit:
        raise ValueError(f"{input_name} is a batch of {images.shape[0]} images: at most {limit} are scored in one "
                         "table (one row each); split the batch")


@dataclass
class ScoreTable:
    per_kind: dict  # kind -> [N_kind] scores (only the kinds given)
    labels: list

    @property
    def rows(self) -> int:
        return max((len(v) for v in self.per_kind.values()), default=0)

    def value(self, kind: str, i: int) -> float | None:
        """The score; NaN for a sample with non-finite pixels; None where the kind has no row i."""
        v = self.per_kind.get(kind)
        return float(v[i]) if v is not None and i < len(v) else None

    def row_mean(self, i: int) -> float:
        vals = [x for x in (self.value(k, i) for k in KINDS) if x is not None and math.isfinite(x)]
        return sum(vals) / len(vals) if vals else -math.inf

    def mean(self, kind: str) -> float:
        """Over the samples that could be scored; 0 when none could (or the kind was not given)."""
        v = self.per_kind.get(kind)
        v = v[torch.isfinite(v)] if v is not None else None
        return float(v.mean()) if v is not None and len(v) else 0.0

    @property
    def unscored(self) -> int:
        """Samples left out for non-finite pixels."""
        return sum(int((~torch.isfinite(v)).sum()) for v in self.per_kind.values())

    @property
    def best(self) -> int:
        return max(range(self.rows), key=self.row_mean) if self.rows else 0

    def cells(self) -> tuple[list[str], list[list[str]]]:
        kinds = [k for k in KINDS if k in self.per_kind]
        headers = ["run"] + kinds + (["mean"] if len(kinds) > 1 else [])
        rows = []
        for i in range(self.rows):
            vals = [self.value(k, i) for k in kinds]
            row = [self.labels[i]] + ["-" if v is None else NAN_CELL if not math.isfinite(v) else f"{v:.4f}"
                                      for v in vals]
            if len(kinds) > 1:
                m = self.row_mean(i)
                row.append(f"{m:.4f}" if math.isfinite(m) else "-")
            rows.append(row)
        return headers, rows


def parse_labels(text: str, n: int) -> list[str]:
    """Comma- or newline-separated names for the batch rows; missing ones are '#<index>'. ValueError naming
    `labels` for a name too long to draw in the table's first column."""
    names = [t.strip() for t in (text or "").replace("\n", ",").split(",")]
    names = [t for t in names if t]
    for name in names[:n]:
        if len(name) > MAX_LABEL_CHARS:
            shown = name[:30] + "..."
            raise ValueError(f"labels: {shown!r} is {len(name):,} characters: a row name may have at most "
                             f"{MAX_LABEL_CHARS} (it is drawn in the table's first column)")
    return [names[i] if i < len(names) else f"#{i}" for i in range(n)]


def score(clip_vision, reference: torch.Tensor, samples: dict, labels: str = "", crop: bool = True) -> ScoreTable:
    """samples: {kind: IMAGE batch or None}. Raises ValueError naming the inputs when none is given."""
    given = {k: v for k, v in samples.items() if v is not None}
    unknown = set(given) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown sample kinds {sorted(unknown)}; expected {', '.join(KINDS)}")
    if not given:
        raise ValueError("connect at least one of style_images, content_images, combined_images: there is nothing "
                         "to score")
    if reference is None:
        raise ValueError("reference: connect the training image")
    check_batch("reference", reference, MAX_REFERENCES)
    bad = (~finite_images(reference)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"reference: image {bad[0]} of the batch has NaN or infinite pixels (an fp16 VAE decode "
                         "can give them): nothing can be compared with it")
    for kind, images in given.items():
        check_batch(f"{kind}_images", images, MAX_ROWS)
    per_kind = {k: clip_i(clip_vision, reference, v, crop) for k, v in given.items()}
    n = max(len(v) for v in per_kind.values())
    return ScoreTable(per_kind, parse_labels(labels, n))
