import pytest
import torch

from lessonlib import captions as C


def blank(n=1, size=28):
    return -torch.ones(n, 1, size, size)


def bar(width, *, shear=0.0, length=18, size=28):
    """A vertical bar of the given width; shear > 0 moves its top to the right ('/')."""
    img = blank(size=size)
    top = (size - length) // 2
    for r in range(top, top + length):
        offset = round(shear * ((top + length - 1) - r))  # rows above the bottom move right
        c0 = size // 2 - width // 2 + offset - round(shear * length / 2)
        img[0, 0, r, c0:c0 + width] = 1.0
    return img


def test_thickness_orders_bars_and_is_close_to_the_width_of_long_bars():
    m = {w: C.measure(bar(w))["thickness"].item() for w in (1, 2, 4)}
    assert m[1] < m[2] < m[4]
    assert m[4] == pytest.approx(4 * 18 / (4 + 18), rel=1e-5)  # w L / (w + L)


def test_slant_has_the_sign_of_the_shear():
    upright, right, left = (C.measure(bar(2, shear=s))["slant"].item() for s in (0.0, 0.4, -0.4))
    assert abs(upright) < 1e-6
    assert right > 0.3 and left < -0.3


def test_size_grows_with_the_bounding_box_and_empty_images_are_zero():
    small, large = blank(), blank()
    small[0, 0, 10:16, 10:16] = 1
    large[0, 0, 4:24, 6:22] = 1
    sizes = C.measure(torch.cat([small, large, blank()]))["size"]
    assert sizes.tolist() == pytest.approx([6.0, (20 * 16) ** 0.5, 0.0])


def test_measure_refuses_wrong_shapes_and_ranges():
    with pytest.raises(ValueError, match="grey images"):
        C.measure(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="127.5"):
        C.measure(torch.full((1, 1, 28, 28), 255.0))


def test_bins_split_their_own_data_into_near_equal_thirds(gen):
    imgs = torch.cat([bar(w, shear=s) for w in (1, 2, 3, 4, 5, 6) for s in (-0.3, -0.1, 0.0, 0.1, 0.3)])
    bins = C.fit_bins(imgs)
    words = bins.words(C.measure(imgs))
    assert words["thickness"][0] == "thin" and words["thickness"][-1] == "thick"
    for attr in ("thickness", "slant"):
        counts = [words[attr].count(w) for w in C.ATTRIBUTE_WORDS[attr]]
        assert max(counts) - min(counts) <= 10, counts
    assert C.attribute_adherence(bar(6), "thickness", "thick", bins) == 1.0
    with pytest.raises(ValueError, match="not a word"):
        C.attribute_adherence(bar(6), "thickness", "bold", bins)


def test_captions_read_well_and_check_their_input():
    assert C.caption(8) == "an eight"
    assert C.caption(1) == "a one"
    assert C.caption(8, numeral=True) == "an 8"
    assert C.caption(7, attributes=("upright", "thick")) == "an upright thick seven"
    assert C.caption(3, template="the {a}digit {d}", attributes=("thin",)) == "the thin digit three"
    with pytest.raises(ValueError, match="0-9"):
        C.caption(10)
    with pytest.raises(ValueError, match="slot"):
        C.caption(3, template="a digit")


def test_random_captions_are_seeded_and_name_the_digit():
    labels = torch.arange(10)
    words = {a: [C.ATTRIBUTE_WORDS[a][0]] * 10 for a in C.ATTRIBUTES}
    first = C.random_captions(labels, words, generator=torch.Generator().manual_seed(1))
    again = C.random_captions(labels, words, generator=torch.Generator().manual_seed(1))
    assert first == again
    for d, text in zip(range(10), first):
        assert C.DIGIT_WORDS[d] in text.split() or str(d) in text.split()


def test_withheld_digit_and_pair_never_appear_in_captions():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(2000) % 10
    words = {a: [C.ATTRIBUTE_WORDS[a][i % len(C.ATTRIBUTE_WORDS[a])] for i in range(2000)] for a in C.ATTRIBUTES}
    texts = C.random_captions(labels, words, generator=gen, p_digit=0.7, withhold_digit=7, withhold_pair=("thick", 3))
    by_digit = {d: [t.split() for t, y in zip(texts, labels.tolist()) if y == d] for d in range(10)}
    assert not any({"seven", "7"} & set(t) for ts in by_digit.values() for t in ts)   # the word, in any caption
    assert all(t for t in by_digit[7])                                                  # sevens still get captions
    assert not any("thick" in t for t in by_digit[3])
    assert any("thick" in t for t in by_digit[5]) and any("three" in t or "3" in t for t in by_digit[3])
    # without withholding, the same words do appear
    plain = C.random_captions(labels, words, generator=torch.Generator().manual_seed(0), p_digit=0.7)
    assert any("seven" in t.split() or "7" in t.split() for t in plain)
    with pytest.raises(ValueError, match="withhold_pair"):
        C.random_captions(labels, words, generator=gen, withhold_pair=("heavy", 3))
    with pytest.raises(ValueError, match="withhold_digit"):
        C.random_captions(labels, words, generator=gen, withhold_digit=10)


def test_held_out_templates_are_never_training_templates():
    assert len(C.TRAIN_TEMPLATES) >= 10 and len(C.HELD_OUT_TEMPLATES) >= 3
    assert not set(C.TRAIN_TEMPLATES) & set(C.HELD_OUT_TEMPLATES)
    assert all(t.count("{}") == 1 for t in C.zero_shot_templates())


def test_class_captions_fill_templates_with_the_class_and_fix_articles():
    labels = torch.tensor([0, 1, 2])
    names = ["airplane", "automobile", "bird"]
    texts = C.class_captions(labels, names, generator=torch.Generator().manual_seed(0), templates=("a photo of a {}.",))
    assert texts == ["a photo of an airplane.", "a photo of an automobile.", "a photo of a bird."]
    assert not set(C.CIFAR_TRAIN_TEMPLATES) & set(C.CIFAR_HELD_OUT_TEMPLATES)
