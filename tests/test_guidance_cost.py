"""Guidance cost counted (lessonlib.costs.step_cost / guidance_costs): passes per network and FLOPs per sample,
checked on small linear networks whose FLOPs are known by hand, and on the shipped checkpoints."""
import pytest
import torch
from torch import nn

from lessonlib import costs
from lessonlib.guidance import batched_cfg, cfg, classifier_grad, conditional, grad_guidance
from lessonlib.schedules import make_schedule

D = 16  # pixels of a 1 x 4 x 4 image


class LinearEps(nn.Module):
    """eps(x, t, cond) = W x (+ a class offset): 2 D^2 FLOPs per sample and pass."""

    def __init__(self):
        super().__init__()
        self.lin, self.emb = nn.Linear(D, D, bias=False), nn.Embedding(11, D)

    def forward(self, x, t, cond=None):
        out = self.lin(x.flatten(1))
        if cond is not None:
            out = out + self.emb(torch.as_tensor(cond).reshape(-1).expand(x.shape[0]) % 11)
        return out.view_as(x)


class LinearClassifier(nn.Module):
    """logits = V x: 2 D K FLOPs per sample forward, as many backward to the input."""

    def __init__(self, k=10):
        super().__init__()
        self.lin = nn.Linear(D, k, bias=False)

    def forward(self, x, t):
        return self.lin(x.flatten(1))


@pytest.fixture
def parts():
    torch.manual_seed(0)
    return LinearEps(), LinearClassifier(), torch.randn(3, 1, 4, 4), torch.full((3,), 500)


def test_one_pass_of_a_linear_model_is_two_d_squared_flops(parts):
    unet, _, x, t = parts
    c = costs.step_cost(lambda x, t: unet(x, t), x, t, {"U-Net": unet})
    assert c.forward == {"U-Net": 1} and c.backward == {"U-Net": 0}
    assert c.flops == 2 * D * D and c.passes == "U-Net 1 fwd"


def test_classifier_guidance_adds_the_classifier_forward_and_its_backward_to_the_input(parts):
    unet, clf, x, t = parts
    guided = grad_guidance(lambda x, t: unet(x, t), make_schedule("linear", 1000), classifier_grad(clf, 3), 2.0)
    c = costs.step_cost(guided, x, t, {"U-Net": unet, "classifier": clf})
    assert c.forward == {"U-Net": 1, "classifier": 1} and c.backward == {"U-Net": 0, "classifier": 1}
    # the gradient goes to the pixels only: one matmul back (grad_out V), none for the classifier's weights
    assert c.flops == 2 * D * D + 2 * D * 10 + 2 * D * 10
    assert c.passes == "U-Net 1 fwd; classifier 1 fwd + 1 bwd"


def test_cfg_is_two_passes_batched_or_not(parts):
    unet, _, x, t = parts
    two = costs.step_cost(cfg(conditional(unet, 2), conditional(unet, -1), 3.0), x, t, {"U-Net": unet})
    one = costs.step_cost(batched_cfg(unet, 2, -1, 3.0), x, t, {"U-Net": unet})
    assert two.forward == one.forward == {"U-Net": 2}
    assert two.flops == one.flops == 2 * 2 * D * D


def test_step_cost_refuses_what_it_cannot_count(parts):
    unet, clf, x, t = parts
    with pytest.raises(ValueError, match="at least one network"):
        costs.step_cost(lambda x, t: unet(x, t), x, t, {})
    with pytest.raises(TypeError, match="nn.Module"):
        costs.step_cost(lambda x, t: unet(x, t), x, t, {"U-Net": unet.forward})
    with pytest.raises(ValueError, match="none of the networks"):
        costs.step_cost(lambda x, t: unet(x, t), x, t, {"classifier": clf})


def test_format_costs_gives_ratios_to_the_base_and_refuses_unknown_names(parts):
    unet, clf, x, t = parts
    base = costs.step_cost(lambda x, t: unet(x, t), x, t, {"U-Net": unet}, method="unguided")
    two = costs.step_cost(batched_cfg(unet, 2, -1, 3.0), x, t, {"U-Net": unet}, method="CFG")
    base.ms, two.ms = [1.0, 2.0], [2.0, 3.0]
    table = costs.format_costs([base, two], highlight=["CFG"])
    cfg_row = next(line for line in table.splitlines() if "CFG" in line)
    assert cfg_row.startswith("->") and " 2.00 " in cfg_row and "1.75 [1.50, 2.00]" in cfg_row
    with pytest.raises(ValueError, match="base"):
        costs.format_costs([two])
    with pytest.raises(ValueError, match="not measured"):
        costs.format_costs([base, two], highlight=["APG"])


def test_the_course_methods_make_the_passes_their_lessons_describe():
    found = {c.method: c for c in costs.guidance_costs(batch=2, rounds=0)}
    assert set(found) == set(costs.GUIDANCE_METHODS)
    assert found["classifier guidance"].passes == "U-Net 1 fwd; classifier 1 fwd + 1 bwd"
    assert found["CFG, one batched pass"].passes == found["CFG, two passes"].passes == "U-Net 2 fwd"
    # the clean tower differentiates through the U-Net: a second U-Net pass, and its backward
    assert found["CLIP guidance, clean tower on x0_hat"].passes.startswith("U-Net 2 fwd + 1 bwd")
    base = found["unguided"].flops
    assert 1.05 < found["classifier guidance"].flops / base < 2  # a small classifier, three passes of it
    assert found["CFG, perpendicular part (APG)"].flops == pytest.approx(2 * base, rel=0.01)


# --- attention memory (lesson 10, section 2) ---

def test_naive_attention_matches_torch_sdpa_and_rejects_unknown_impls():
    q, k, v = torch.randn(3, 2, 1, 50, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(costs.naive_attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v),
                          atol=1e-5)
    with pytest.raises(ValueError, match="impl must be one of"):
        costs.attention_run("flash", resolution=4)
    with pytest.raises(ValueError, match="keys must be a positive"):
        costs.attention_run("naive", resolution=4, keys=0)


def test_attention_run_sees_the_two_matrices_of_naive_attention_and_none_in_sdpa():
    n = 32 * 32
    naive = costs.attention_run("naive", resolution=32, channels=16, heads=2)
    assert naive.matrix_bytes == 2 * n * n * 4
    assert naive.peak_bytes >= 2 * naive.matrix_bytes, "scores and probabilities live at the same time"
    fused = costs.attention_run("sdpa", resolution=32, channels=16, heads=2)
    assert fused.peak_bytes < naive.matrix_bytes / 4, f"SDPA allocated {fused.peak_bytes} bytes"
    cross = costs.attention_run("naive", resolution=32, channels=16, keys=7)
    assert (cross.keys, cross.matrix_bytes) == (7, n * 7 * 4) and cross.peak_bytes < naive.peak_bytes / 50
    assert naive.ms > 0 and "softmax" in naive.kernel
