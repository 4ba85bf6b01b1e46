"""The *predict, then measure* exercises: a question asked before a lesson's measurement, and why it comes out as
it does."""
from __future__ import annotations

from .engine import Prediction

__all__ = ["PREDICTIONS"]


PREDICTIONS: dict[str, Prediction] = {p.name: p for p in [
    Prediction("cfg_diversity_trend", "07", "As the CFG scale goes from 1 to 5, does within-class diversity go "
               "'up', 'down' or stay 'flat' (within 5% of its value at s = 1)?", "guidance pushes along the implicit "
               "classifier's gradient (s - 1) times harder than the conditional model does; it aims at "
               "p(x | c) p(c | x)^(s - 1) (lesson 01: without sampling it exactly) and sharpens each class towards "
               "the samples the classifier is surest about, so the samples of a class resemble each other more",
               choices=("up", "down", "flat")),
    Prediction("cfgpp_scale_at_40_steps", "11", "CFG++ with lambda = 0.6 and 40 DDIM steps equals CFG with a "
               "per-step scale; what is its largest value?", "w = lambda sbar_hi / (sbar_hi - sbar_lo) grows as the "
               "steps get shorter, so the same lambda guides harder with more steps"),
    Prediction("ddim_or_ddpm_at_10_steps", "02", "With 10 sampling steps, which gives the lower FID_judge on this "
               "model: 'ddim', 'ddpm', or is it a 'tie' (95% intervals overlapping)?", "at few steps every step "
               "makes a large error; DDIM follows the ODE deterministically, so its errors carry along the path, "
               "while DDPM's fresh noise partly washes earlier errors out but needs small steps to be accurate. "
               "Which effect wins depends on the model and the step count, so it is measured, not assumed",
               choices=("ddim", "ddpm", "tie")),
    Prediction("clean_accuracy_at_t300", "03", "What test accuracy (0 to 1) does the classifier trained only on "
               "clean digits reach on x_t at t = 300?", "the clean classifier never saw noise; once the noise is "
               "as strong as the ink, its inputs look like nothing it was trained on and it gives (almost) every "
               "noisy digit the same answer, so its accuracy falls to about that class's share, near chance (0.1)",
               absolute_tolerance=0.1),
    Prediction("adherence_at_scale_1", "04", "What share of classifier-guided samples at s = 1 (the Bayes-correct "
               "conditional if the models were exact) does the judge assign to the requested class?",
               "s = 1 samples p(x | y) only if the unconditional model and the classifier were exact; with small "
               "models the classifier's gradient is too weak a push at s = 1, which is why Dhariwal & Nichol used "
               "scales well above 1", absolute_tolerance=0.15),
    Prediction("clip_transfer_accuracy", "05", "What zero-shot accuracy (0 to 1) does the small CLIP reach on the "
               "1,797 scikit-learn digits, which come from other writers, were scanned at 8x8 and are upsampled?",
               "the images differ from MNIST in blur, thickness and centring, a distribution shift nothing in "
               "training prepared for; the digit shapes still carry over, so it keeps much of its MNIST accuracy "
               "but not all", absolute_tolerance=0.1),
    Prediction("clip_adherence_past_best", "06", "With the noise-aware tower, as the CLIP-guidance scale goes from "
               "100 to 1,000, does digit adherence go 'up', 'down' or stay 'flat' (within 0.05)?", "past a point the "
               "gradient of the noise-aware tower's cosine dominates the model's eps and pushes the samples towards "
               "whatever that tower scores highly, not towards digits: they leave the data and the judge stops "
               "recognising them",
               choices=("up", "down", "flat")),
    Prediction("attention_memory_ratio", "08", "At 64x64 positions, how many times more bytes does "
               "self-attention's probability matrix take than cross-attention's to this model's L text tokens?",
               "self-attention's matrix is N x N with N = H W = 4,096 positions, cross-attention's N x L, so the "
               "ratio is N / L; self-attention's memory grows with N squared, which is why big models self-attend "
               "only at low resolutions (Stable Diffusion: a 64x64 latent, not 512x512 pixels)"),
    Prediction("perpendicular_helps_at_8", "09", "Does dropping the part of d parallel to c (the perpendicular "
               "variant, on eps) lower FID_judge at s = 8 beyond the 95% intervals: 'yes' or 'no'?",
               "the variant changes the guided prediction by (s - 1) times d's parallel part only, and on eps that "
               "part is a small share of d along the trajectory (section 3 prints the ratio); at N = 100 "
               "a change that small cannot separate intervals several units wide", choices=("yes", "no")),
]}
