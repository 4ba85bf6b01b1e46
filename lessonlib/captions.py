"""Measurable digit attributes and the captions built from them (lessons 05, 06, 08).

Every attribute is a number computed from the pixels, so a caption is never a guess and the same
measurement scores generated samples later (attribute adherence):

- thickness: 2 * ink / perimeter, with ink = sum of (x+1)/2 and perimeter = its total variation.
  A w x L bar gives wL / (w + L), close to w for long strokes.
- slant: -cov(col, row) / var(row) from the ink-weighted image moments: columns gained per row
  going up. Positive leans right ("/"), negative leans left ("\\").
- size: sqrt of the area of the bounding box of pixels with ink > 0.5.

Words come from data quantiles (:func:`fit_bins`): tertiles for thickness and slant, the median for
size. Captions come from templates: ``TRAIN_TEMPLATES`` (used to train CLIP) and ``HELD_OUT_TEMPLATES``
(never seen in training, for honest zero-shot numbers), with the digit as a word or a numeral and
with or without attribute words.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ATTRIBUTES", "ATTRIBUTE_WORDS", "DIGIT_WORDS", "TRAIN_TEMPLATES", "HELD_OUT_TEMPLATES",
           "ATTRIBUTE_ONLY_TEMPLATES", "CIFAR_TRAIN_TEMPLATES", "CIFAR_HELD_OUT_TEMPLATES", "AttributeBins", "class_captions",
           "measure", "fit_bins", "caption", "random_captions", "zero_shot_templates", "attribute_adherence"]

ATTRIBUTES = ("thickness", "slant", "size")
ATTRIBUTE_WORDS = {
    "thickness": ("thin", "regular", "thick"),
    "slant": ("left-leaning", "upright", "right-leaning"),
    "size": ("small", "large"),
}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# {a}: attribute words followed by a space, or nothing; {d}: the digit as a word or a numeral
TRAIN_TEMPLATES = (
    "a {a}{d}",
    "the {a}digit {d}",
    "a handwritten {a}{d}",
    "the {a}number {d}",
    "a {a}drawing of a {d}",
    "an image of a {a}{d}",
    "a picture of the {a}digit {d}",
    "a scan of a {a}{d}",
    "a {a}{d} in white ink",
    "a black and white photo of a {a}{d}",
    "someone wrote a {a}{d}",
    "a {a}handwritten number {d}",
)
# captions that name attributes but no digit (lesson 08 trains on a few, so "thin" alone means something)
ATTRIBUTE_ONLY_TEMPLATES = ("a {a}digit", "a {a}handwritten number", "something {a}written by hand")
# CIFAR-10 captions name the class only (lesson 05's comparison); "{}" is the class name
CIFAR_TRAIN_TEMPLATES = ("a photo of a {}.", "a picture of the {}.", "an image of a {}.", "a small photo of a {}.",
                         "a close-up photo of the {}.", "a photo of my {}.", "a bright photo of a {}.",
                         "a dark photo of the {}.", "a cropped photo of a {}.", "a low resolution photo of a {}.")
CIFAR_HELD_OUT_TEMPLATES = ("a blurry photo of a {}.", "a jpeg photo of the {}.", "this is a {}.",
                            "a pixelated photo of the {}.")
HELD_OUT_TEMPLATES = (
    "a sketch of a {a}{d}",
    "this is a {a}{d}",
    "a close-up of the {a}digit {d}",
    "my {a}{d}",
    "a {a}{d} on a dark background",
)


@dataclass(frozen=True)
class AttributeBins:
    """Quantile edges that turn measurements into words: values below edges[0] get the first word, etc."""

    thickness: tuple[float, float]
    slant: tuple[float, float]
    size: tuple[float]

    def word_index(self, attribute: str, values: Tensor) -> Tensor:
        """Index of the word (0 = first in ATTRIBUTE_WORDS[attribute]) for each measured value."""
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {attribute!r}; use one of {ATTRIBUTES}.")
        return torch.bucketize(values, torch.tensor(getattr(self, attribute), dtype=values.dtype))

    def words(self, measures: dict[str, Tensor]) -> dict[str, list[str]]:
        """Per attribute, the word of each image: {"thickness": ["thin", ...], ...}."""
        return {a: [ATTRIBUTE_WORDS[a][i] for i in self.word_index(a, measures[a]).tolist()] for a in ATTRIBUTES}

    def to_dict(self) -> dict:
        return {a: list(getattr(self, a)) for a in ATTRIBUTES}


def _check_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"measure takes grey images (N, 1, H, W) in [-1, 1], got {shape}.")
    if images.min() < -1.01 or images.max() > 1.01:
        raise ValueError(f"images must lie in [-1, 1] (got min {images.min():.2f}, max {images.max():.2f}); "
                         "convert uint8 images with x / 127.5 - 1.")
    return images.detach().float().cpu()


def measure(images: Tensor) -> dict[str, Tensor]:
    """Thickness, slant and size of each image, (N,) float tensors (lesson 05); see the module docstring."""
    ink = (_check_images(images)[:, 0] + 1).clamp(0, 2) / 2  # (N, H, W) in [0, 1]
    n, h, w = ink.shape
    padded = torch.nn.functional.pad(ink, (1, 1, 1, 1))
    perimeter = padded.diff(dim=1).abs().sum((1, 2)) + padded.diff(dim=2).abs().sum((1, 2))
    mass = ink.sum((1, 2))
    thickness = 2 * mass / perimeter.clamp_min(1e-6)
    rows = torch.arange(h, dtype=ink.dtype).view(1, h, 1)
    cols = torch.arange(w, dtype=ink.dtype).view(1, 1, w)
    m = mass.clamp_min(1e-6).view(n, 1, 1)
    r_mean = (ink * rows).sum((1, 2), keepdim=True) / m
    c_mean = (ink * cols).sum((1, 2), keepdim=True) / m
    cov = (ink * (rows - r_mean) * (cols - c_mean)).sum((1, 2)) / m.view(n)
    var_r = (ink * (rows - r_mean) ** 2).sum((1, 2)) / m.view(n)
    slant = -cov / var_r.clamp_min(1e-6)
    on = ink > 0.5
    any_r, any_c = on.any(2), on.any(1)
    height = (h - any_r.flip(1).float().argmax(1) - any_r.float().argmax(1)).float() * any_r.any(1)
    width = (w - any_c.flip(1).float().argmax(1) - any_c.float().argmax(1)).float() * any_c.any(1)
    return {"thickness": thickness, "slant": slant, "size": (height * width).sqrt()}


def fit_bins(images: Tensor) -> AttributeBins:
    """Word boundaries from data: tertiles of thickness and slant, median of size (lesson 05)."""
    m = measure(images)
    q = lambda v, ps: tuple(round(float(x), 4) for x in torch.quantile(v, torch.tensor(ps)))  # noqa: E731
    return AttributeBins(thickness=q(m["thickness"], [1 / 3, 2 / 3]), slant=q(m["slant"], [1 / 3, 2 / 3]),
                         size=q(m["size"], [0.5]))


_ARTICLE = re.compile(r"\b([Aa]) (?=(?:[aeiu]|o(?!ne)|8\b|eight\b|11\b))")


def caption(digit: int, *, template: str = "a {a}{d}", attributes: tuple[str, ...] = (), numeral: bool = False) -> str:
    """One caption: ``caption(7, attributes=("thick",))`` -> "a thick seven" (lesson 05)."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be 0-9, got {digit!r}.")
    if "{d}" not in template:
        raise ValueError(f"a template needs a {{d}} slot for the digit, got {template!r}.")
    return _fill(template, attributes, str(int(digit)) if numeral else DIGIT_WORDS[int(digit)])


def _fill(template: str, attributes, digit: str = "") -> str:
    """Format a template with attribute words and a digit, then fix "a" before vowel sounds ("an eight")."""
    return _ARTICLE.sub(r"\1n ", template.format(a="".join(f"{word} " for word in attributes), d=digit))


def random_captions(labels: Tensor, words: dict[str, list[str]], *, generator: torch.Generator,
                    templates=TRAIN_TEMPLATES, p_attribute: float = 0.5, p_digit: float = 1.0,
                    withhold_digit: int | None = None, withhold_pair: tuple[str, int] | None = None) -> list[str]:
    """A random caption per image: random template, word or numeral, each attribute kept with p_attribute.

    With ``p_digit < 1`` a caption with at least one attribute leaves the digit out with probability
    1 - p_digit ("a thin digit"); the default always names the digit (how mnist-clip was trained).
    Two things can be kept out of every caption, for a real zero-shot test (lesson 05):
    ``withhold_digit`` never names that digit, as a word or a numeral (its images get attribute-only
    captions, all three attributes when none was drawn), and ``withhold_pair = (word, digit)`` never puts
    that attribute word in a caption of that digit (the word is dropped from those captions).
    """
    if withhold_digit is not None and withhold_digit not in range(10):
        raise ValueError(f"withhold_digit must be a digit 0-9 or None, got {withhold_digit!r}.")
    if withhold_pair is not None:
        known = [w for ws in ATTRIBUTE_WORDS.values() for w in ws]
        if len(withhold_pair) != 2 or withhold_pair[0] not in known or withhold_pair[1] not in range(10):
            raise ValueError(f"withhold_pair must be (attribute word, digit), e.g. ('thick', 3), with a word from "
                             f"{known}; got {withhold_pair!r}.")
    n = len(labels)
    no_digit = (torch.rand(n, generator=generator) >= p_digit).tolist() if p_digit < 1 else [False] * n
    plain = (torch.randint(0, len(ATTRIBUTE_ONLY_TEMPLATES), (n,), generator=generator).tolist()
             if p_digit < 1 or withhold_digit is not None else None)
    pick = torch.randint(0, len(templates), (n,), generator=generator).tolist()
    numeral = (torch.rand(n, generator=generator) < 0.5).tolist()
    keep = (torch.rand(n, len(ATTRIBUTES), generator=generator) < p_attribute).tolist()
    order = torch.rand(n, len(ATTRIBUTES), generator=generator).argsort(1).tolist()
    out = []
    for i, y in enumerate(labels.tolist()):
        attrs = tuple(words[ATTRIBUTES[j]][i] for j in order[i] if keep[i][j])
        if withhold_pair is not None and y == withhold_pair[1]:
            attrs = tuple(word for word in attrs if word != withhold_pair[0])
        if y == withhold_digit:
            attrs = attrs or tuple(words[ATTRIBUTES[j]][i] for j in order[i])
            out.append(_fill(ATTRIBUTE_ONLY_TEMPLATES[plain[i]], attrs))
        elif attrs and no_digit[i]:
            out.append(_fill(ATTRIBUTE_ONLY_TEMPLATES[plain[i]], attrs))
        else:
            out.append(caption(y, template=templates[pick[i]], attributes=attrs, numeral=numeral[i]))
    return out


def class_captions(labels: Tensor, class_names, *, generator: torch.Generator, templates=CIFAR_TRAIN_TEMPLATES) -> list[str]:
    """A random template per image filled with its class name, articles fixed ("an airplane") (lesson 05)."""
    pick = torch.randint(0, len(templates), (len(labels),), generator=generator).tolist()
    return [_ARTICLE.sub(r"\1n ", templates[k].format(class_names[y])) for k, y in zip(pick, labels.tolist())]


def zero_shot_templates(held_out: bool = True) -> list[str]:
    """Templates with one ``{}`` slot for a class name, without attribute words (lesson 05)."""
    return [t.replace("{a}", "").replace("{d}", "{}") for t in (HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES)]


def attribute_adherence(images: Tensor, attribute: str, word: str, bins: AttributeBins) -> float:
    """Share of images whose measured attribute falls in the bin of ``word`` (chance: 1/3 or 1/2) (lesson 06)."""
    if attribute not in ATTRIBUTES or word not in ATTRIBUTE_WORDS[attribute]:
        raise ValueError(f"{word!r} is not a word for {attribute!r}; use one of {ATTRIBUTE_WORDS.get(attribute)} "
                         f"for one of {ATTRIBUTES}.")
    got = bins.word_index(attribute, measure(images)[attribute])
    return float((got == ATTRIBUTE_WORDS[attribute].index(word)).float().mean())


TEXT_EVAL_WORDS = (None, ("thickness", "thick"), ("thickness", "thin"), ("slant", "left-leaning"),
                   ("slant", "right-leaning"))


def text_eval_prompts(n: int) -> tuple[Tensor, list, list[str]]:
    """Digits (i mod 10), the attribute asked for (cycling through TEXT_EVAL_WORDS per 10) and prompts (lesson 08)."""
    digits = torch.arange(n) % 10
    asked = [TEXT_EVAL_WORDS[(i // 10) % len(TEXT_EVAL_WORDS)] for i in range(n)]
    return digits, asked, [caption(int(d), attributes=(a[1],) if a else ()) for d, a in zip(digits, asked)]
