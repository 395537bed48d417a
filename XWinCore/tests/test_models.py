"""xwin.models: losses, masks, encoder, EMA, predictors, decoder, the world model's objective and the config schema."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xwin.config import LossConfig, MaskConfig, ModelConfig, XWinConfig, config_path, load_config
from xwin.errors import XWinInputError
from xwin.models import (
    GradientReversal,
    MultiBlockMaskGenerator,
    affinity_contrastive_loss,
    affinity_matrix,
    create_model,
    domain_cosine,
    momentum_at,
    reconstruction_loss,
    view_latent,
)

torch.set_num_threads(2)

TINY = dict(embed_dim=32, depth=2, num_heads=2, img_size=64, predictor_depth=1, predictor_width=32,
            predictor_heads=2, mask_predictor_depth=1, mask_predictor_width=32, mask_predictor_heads=2,
            decoder_depth=1, decoder_width=32, decoder_heads=2, domain_hidden=16)


def tiny_config(**loss) -> XWinConfig:
    return XWinConfig(model=ModelConfig(**TINY), loss=LossConfig(**loss), mask=MaskConfig(num_targets=2, min_keep=2))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model(tiny_config())


def tiny_batch(b: int = 4, real: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    batch = dict(context=torch.rand(b, 1, 64, 64, generator=g), target=torch.rand(b, 1, 64, 64, generator=g),
                 d_lao=torch.tensor([0.0, 30.0, -20.0, 45.0])[:b], d_cran=torch.tensor([0.0, 10.0, -5.0, 0.0])[:b],
                 group=torch.tensor([0, 0, 1, 1])[:b])
    if real:
        batch["real"] = torch.rand(real, 1, 64, 64, generator=g)
    return batch


# ---------------------------------------------------------------- contrastive alignment

def test_contrastive_loss_gradients_and_permutation_invariance():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(6, 16, generator=g, requires_grad=True)
    target = torch.randn(6, 16, generator=g)
    group = torch.tensor([0, 0, 0, 1, 1, 2])
    loss = affinity_contrastive_loss(pred, target, tau=0.1, tau_affinity=0.2, group=group)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    perm = torch.tensor([4, 2, 5, 0, 3, 1])
    permuted = affinity_contrastive_loss(pred[perm], target[perm], tau=0.1, tau_affinity=0.2, group=group[perm])
    torch.testing.assert_close(permuted, loss)


def test_contrastive_loss_reduces_to_symmetric_infonce_as_affinity_temperature_vanishes():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    tau = 0.2
    logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T / tau
    labels = torch.arange(5)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    torch.testing.assert_close(affinity_contrastive_loss(pred, target, tau, tau_affinity=1e-6), expected)


def test_contrastive_loss_of_a_two_by_two_case_worked_by_hand():
    """p = (1, 0), (0, 1); t = (1, 0), (1, 1)/√2; τ = 1, distinct targets so A = I. With c = 1/√2 the similarities
    are S = [[1, c], [0, c]]: pred→target rows cost ln(1 + e^(c−1)) = 0.557386 and ln(1 + e^(−c)) = 0.400834,
    target→pred rows (Sᵀ = [[1, 0], [c, c]]) ln(1 + e^(−1)) = 0.313262 and ln 2 = 0.693147; L = ½(½·0.958220 +
    ½·1.006409) = 0.491157."""
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[1.0, 0.0], [3.0, 3.0]])  # not unit length: the loss normalises
    loss = affinity_contrastive_loss(pred, target, tau=1.0, tau_affinity=1e-6)
    assert float(loss) == pytest.approx(0.491157, abs=1e-6)
    # τ = 0.5 doubles the logits: ln(1 + e^(2c−2)) = 0.442548, ln(1 + e^(−2c)) = 0.217622, ln(1 + e^(−2)) = 0.126928,
    # ln 2 → L = 0.370061
    assert float(affinity_contrastive_loss(pred, target, 0.5, 1e-6)) == pytest.approx(0.370061, abs=1e-6)


def test_affinity_spreads_mass_over_identical_targets():
    g = torch.Generator().manual_seed(0)
    v, w = torch.randn(8, generator=g), torch.randn(8, generator=g)
    target = torch.stack([v, v, v, w])
    a = affinity_matrix(target, tau_affinity=1e-3)
    torch.testing.assert_close(a[:3, :3], torch.full((3, 3), 1 / 3))  # graded positives: equal share
    torch.testing.assert_close(a[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    # a group boundary removes the affinity between otherwise identical targets
    a = affinity_matrix(target, tau_affinity=1e-3, group=torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(a[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))


# ---------------------------------------------------------------- domain adaptation, decoder loss

def test_gradient_reversal_flips_sign_times_lambda():
    x = torch.randn(3, 4, requires_grad=True)
    y = GradientReversal.apply(x, 0.3)
    torch.testing.assert_close(y, x)
    upstream = torch.randn(3, 4)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, -0.3 * upstream)


def test_domain_cosine_is_mean_pairwise_cosine():
    real, sim = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 0.0]])
    torch.testing.assert_close(domain_cosine(real, sim), torch.tensor(0.5))


def test_reconstruction_loss_is_zero_for_identical_images():
    img = torch.rand(2, 1, 32, 32)
    assert reconstruction_loss(img, img).abs() < 1e-5
    assert reconstruction_loss(img, 1 - img) > 0.1


# ---------------------------------------------------------------- masks

def test_multiblock_masks():
    cfg = MaskConfig(num_targets=4, min_keep=4)
    gen = MultiBlockMaskGenerator((8, 8), cfg)
    masks = gen(5, torch.Generator().manual_seed(3))
    assert masks.context.shape[0] == 5 and masks.targets.shape[:2] == (4, 5)
    assert masks.context.shape[1] >= cfg.min_keep and masks.targets.shape[2] >= 1
    for idx in (masks.context, masks.targets):
        assert idx.min() >= 0 and idx.max() < 64
    for i in range(5):
        context = set(masks.context[i].tolist())
        assert len(context) == masks.context.shape[1]
        for m in range(4):
            assert context.isdisjoint(masks.targets[m, i].tolist())
    again = gen(5, torch.Generator().manual_seed(3))
    assert torch.equal(again.context, masks.context) and torch.equal(again.targets, masks.targets)


def test_masks_on_a_tiny_grid_always_leave_context():
    """2×2 patches (a 32 px model), four 1-patch targets: one draw in ~11 covers the grid; the generator keeps the
    best of its tries, so no batch ever ends without context (it raised a ValueError out of `xwin train`)."""
    gen = MultiBlockMaskGenerator((2, 2), MaskConfig())
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        masks = gen(8, g)
        assert masks.context.shape[1] >= 1
        for i in range(8):
            assert set(masks.context[i].tolist()).isdisjoint(masks.targets[:, i].flatten().tolist())


def test_a_target_block_as_large_as_the_grid_is_refused_up_front():
    with pytest.raises(XWinInputError, match=r"mask.target_scale.*covers the whole 2×2 patch grid"):
        XWinConfig(model=ModelConfig(img_size=32, patch_size=16), mask=MaskConfig(target_scale=(0.5, 1.0)))
    XWinConfig(model=ModelConfig(img_size=32, patch_size=16), mask=MaskConfig(target_scale=(0.5, 1.0)),
               loss=LossConfig(mim=0.0))  # no masked modelling: no masks drawn
    XWinConfig(model=ModelConfig(img_size=32, patch_size=16))  # default masks on 2×2: 1-patch targets, accepted


# ---------------------------------------------------------------- encoder, EMA, predictor, decoder

def test_encoder_tokens_embedding_and_masked_context(model):
    enc = model.context_encoder.eval()
    x = torch.rand(2, 1, 64, 64)
    tokens = enc(x)
    assert tokens.shape == (2, 16, 32)
    torch.testing.assert_close(enc.embed(x), tokens.mean(1))
    keep = torch.tensor([[0, 1, 2, 5, 6], [3, 7, 8, 9, 15]])
    visible = enc(x, keep=keep)
    assert visible.shape == (2, 5, 32)
    torch.testing.assert_close(enc(x, keep=torch.arange(16).expand(2, 16)), tokens)
    x2 = x.clone()
    x2[:, :, 48:, :48] = 0.5  # patches 12-14: hidden from both samples
    torch.testing.assert_close(enc(x2, keep=keep), visible)


def test_encoder_matches_timms_own_forward(model):
    """Without ``keep`` the encoder is timm's ``forward_features`` (its public path), token for token: our forward
    embeds positions with timm's public modules, not the private ``_pos_embed`` (issue 15), and must not drift."""
    enc = model.context_encoder.eval()
    with torch.no_grad():
        enc.vit.pos_embed.normal_()  # positions that matter (timm initialises them small)
        x = torch.rand(2, 1, 64, 64)
        torch.testing.assert_close(enc(x), enc.vit.forward_features(x), rtol=0, atol=0)


def test_ema_target(model):
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    assert momentum_at(0, 100) == pytest.approx(0.996) and momentum_at(100, 100) == pytest.approx(1.0)
    assert momentum_at(0, 100, schedule="linear") == pytest.approx(0.996)
    assert momentum_at(50, 100, schedule="linear") == pytest.approx(0.998)
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.target_encoder.parameters()]
    m = model.update_target(10, 100)
    assert m == pytest.approx(momentum_at(10, 100))
    for t, b, c in zip(model.target_encoder.parameters(), before, model.context_encoder.parameters()):
        torch.testing.assert_close(t, m * b + (1 - m) * c)


def test_ema_with_momentum_one_half_is_the_average_worked_by_hand():
    """Independent of the formula: at momentum 0.5 one EMA step lands halfway (target 2, online 4 → 3; once more →
    3.5), momentum 1 keeps the target, momentum 0 copies the online weights; the model's schedule is cosine from
    0.996 (step 0) through 0.998 (half-way) to 1 (end)."""
    from xwin.models.ema import ema_update
    target, online = torch.nn.Linear(1, 1).requires_grad_(False), torch.nn.Linear(1, 1).requires_grad_(False)
    with torch.no_grad():
        target.weight.fill_(2.0), target.bias.fill_(-1.0), online.weight.fill_(4.0), online.bias.fill_(1.0)
    ema_update(target, online, 0.5)
    assert (float(target.weight), float(target.bias)) == (3.0, 0.0)
    ema_update(target, online, 0.5)
    assert (float(target.weight), float(target.bias)) == (3.5, 0.5)
    ema_update(target, online, 1.0)
    assert float(target.weight) == 3.5
    ema_update(target, online, 0.0)
    assert float(target.weight) == 4.0
    assert momentum_at(50, 100) == pytest.approx(0.998) and momentum_at(25, 100) == pytest.approx(0.996 + 0.004 * 0.5
                                                                                                  * (1 - 0.5 ** 0.5))
    torch.manual_seed(0)
    model = create_model(tiny_config(ema_start=0.5, ema_end=0.5))  # the model's own update, pinned at 0.5
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target_encoder.parameters()]
    assert model.update_target(3, 10) == 0.5
    for t, b in zip(model.target_encoder.parameters(), before):
        torch.testing.assert_close(t, b + 0.5)  # the context encoder was the target + 1 everywhere


def test_view_predictor_depends_on_action(model):
    model.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        a = model.predict_view(x, 0.0, 0.0)
        b = model.predict_view(x, torch.tensor([30.0, 30.0]), torch.tensor([0.0, 0.0]))
        c = model.predict_view(x, 0.0, 15.0)
        t = model.encode(x, target=True)
    assert a.shape == t.shape == (2, 16, 32)
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3


def test_decoder_shape_and_range(model):
    img = model.decode(torch.randn(3, 16, 32) * 10)
    assert img.shape == (3, 1, 64, 64)
    # hand case: with the head's weights at zero every patch shows sigmoid(head bias), unpatchified row-major within
    # the 16 × 16 patch: pixel (r, c) = sigmoid(bias[16·(r mod 16) + (c mod 16)]), whatever the tokens
    bias = torch.linspace(-4.0, 4.0, 256)
    with torch.no_grad():
        model.decoder.head.weight.zero_()
        model.decoder.head.bias.copy_(bias)
        img = model.decode(torch.randn(2, 16, 32) * 10)
    patch = torch.sigmoid(bias).reshape(16, 16)
    torch.testing.assert_close(img[:, 0], patch.repeat(4, 4).expand(2, 64, 64))
    assert float(img[0, 0, 0, 0]) == pytest.approx(0.0179862, abs=1e-6)  # sigmoid(−4) = 1 / (1 + e⁴)
    assert float(img[0, 0, 0, 1]) == pytest.approx(1 / (1 + math.exp(4 - 8 / 255)), abs=1e-6)  # the next bias
    assert float(img[0, 0, 15, 15]) == pytest.approx(0.9820138, abs=1e-6)  # sigmoid(4)


def test_decoder_token_n_paints_patch_n_row_major():
    """``decoder_depth = 0``: a per-token head, so changing token 6 of the 4 × 4 grid (row 1, column 2) changes
    exactly the pixels of that patch, rows 16-31 and columns 32-47."""
    from xwin.models.decoder import ProjectionDecoder
    torch.manual_seed(0)
    decoder = ProjectionDecoder(ModelConfig(**{**TINY, "decoder_depth": 0})).eval()
    tokens = torch.randn(1, 16, 32)
    changed = tokens.clone()
    changed[0, 6] += 3.0
    with torch.no_grad():
        diff = (decoder(changed) - decoder(tokens)).abs()[0, 0]
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[16:32, 32:48] = True
    assert float(diff[inside].min()) > 0 and float(diff[~inside].max()) == 0.0


def test_decoder_refinement_starts_as_the_identity_and_learns():
    from xwin.models.decoder import ProjectionDecoder
    torch.manual_seed(0)
    refined = ProjectionDecoder(ModelConfig(**TINY, decoder_refine=4))
    plain = ProjectionDecoder(ModelConfig(**TINY))
    left_out = plain.load_state_dict(refined.state_dict(), strict=False).unexpected_keys
    assert left_out and all(k.startswith("refine.") for k in left_out)
    tokens = torch.randn(2, 16, 32)
    assert torch.equal(refined(tokens), plain(tokens))
    refined(tokens).square().mean().backward()
    assert refined.refine[-1].weight.grad.abs().sum() > 0  # the zero-initialised conv is trained
    with torch.no_grad():
        refined.refine[-1].bias.fill_(1.0)
    assert not torch.allclose(refined(tokens), plain(tokens))


# ---------------------------------------------------------------- the world model's objective

def test_training_losses_gradients_reach_trainable_parts_only(model):
    out = model.training_losses(tiny_batch(), step=50, total_steps=100)
    for key in ("view", "contrastive", "mim", "domain", "recon", "total", "domain_cosine"):
        assert torch.isfinite(out[key]), key
    assert not out["domain_cosine"].requires_grad
    out["total"].backward()
    for name in ("context_encoder", "view_predictor", "mask_predictor", "domain_classifier", "decoder"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, name
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert not model.target_encoder.training


def test_zero_weight_losses_are_skipped_and_mim_only_trains_the_encoder():
    torch.manual_seed(0)
    model = create_model(tiny_config(view=0.0, contrastive=0.0, domain=0.0, recon=0.0, recon_grad=False))
    out = model.training_losses(tiny_batch(), step=10, total_steps=100)
    assert all(out[k] == 0 for k in ("view", "contrastive", "domain", "recon"))
    assert out["mim"] > 0 and torch.equal(out["total"], out["mim"])
    out["total"].backward()
    for name in ("view_predictor", "decoder", "domain_classifier"):  # never run: no gradient at all
        assert all(p.grad is None for p in getattr(model, name).parameters()), name
    for name in ("context_encoder", "mask_predictor"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name


@pytest.mark.parametrize("kind", ["embedding", "tokens"])
def test_contrastive_latent_selects_what_is_aligned(kind):
    """`loss.contrastive_latent`: mean patch token, or the flattened layer-normed tokens `xwin eval world` retrieves."""
    torch.manual_seed(0)
    model = create_model(tiny_config(view=0.0, mim=0.0, domain=0.0, recon=0.0, recon_grad=False,
                                     contrastive_latent=kind, tau=0.1, tau_affinity=0.05))
    batch = tiny_batch(real=0)
    out = model.training_losses(batch, step=0, total_steps=100)
    with torch.no_grad():
        pred = model.view_predictor(model.context_encoder(batch["context"]), batch["d_lao"], batch["d_cran"])
        target = model.target_encoder(batch["target"])
    latent = (lambda z: z.mean(1)) if kind == "embedding" else view_latent
    expected = affinity_contrastive_loss(latent(pred), latent(target), 0.1, 0.05, batch["group"])
    torch.testing.assert_close(out["contrastive"], expected)
    swapped = target[:, torch.randperm(target.shape[1], generator=torch.Generator().manual_seed(0))]
    assert torch.allclose(swapped.mean(1), target.mean(1), atol=1e-6)  # the embedding ignores where tokens are,
    assert not torch.allclose(view_latent(swapped), view_latent(target))  # the token latent keeps the layout
    # the same property through the model, not through a copy of its formula: shuffle the target encoder's tokens
    perm = torch.randperm(target.shape[1], generator=torch.Generator().manual_seed(1))
    encode = model.target_encoder.forward
    model.target_encoder.forward = lambda *a, **k: encode(*a, **k)[:, perm]
    shuffled = model.training_losses(batch, step=0, total_steps=100)["contrastive"]
    if kind == "embedding":
        torch.testing.assert_close(shuffled, out["contrastive"])
    else:
        assert abs(float(shuffled.detach()) - float(out["contrastive"].detach())) > 1e-3


def test_view_latent_of_a_hand_case():
    """Each token layer-normed over its features (no affine: mean 0, variance 1), then flattened in token order:
    (1, 3) → (−1, 1), (−1, 1) → (−1, 1), (0, 4) → (−1, 1), (2, 2) → (0, 0)."""
    tokens = torch.tensor([[[1.0, 3.0], [-1.0, 1.0]], [[0.0, 4.0], [2.0, 2.0]]])
    scale = 1 / (1 + 1e-5) ** 0.5  # LayerNorm's ε = 1e-5 under the unit variance
    torch.testing.assert_close(view_latent(tokens), torch.tensor([[-1.0, 1.0, -1.0, 1.0], [-1.0, 1.0, 0.0, 0.0]])
                               * torch.tensor([[scale] * 4, [scale, scale, 1.0, 1.0]]))


def test_real_identity_is_the_null_action_on_real_films():
    """`loss.real_identity`: view loss + reconstruction of a real film predicted from itself at Δ = 0; off by
    default."""
    torch.manual_seed(0)
    model = create_model(tiny_config(real_identity=1.0))
    batch = tiny_batch()
    out = model.training_losses(batch, step=0, total_steps=100)
    real = batch["real"]
    with torch.no_grad():
        none = torch.zeros(len(real))
        pred = model.view_predictor(model.context_encoder(real), none, none)
        target = model.target_encoder(real)
    from xwin.models.losses import view_prediction_loss
    expected = view_prediction_loss(pred, target) + reconstruction_loss(model.decoder(pred), real, 0.2)
    torch.testing.assert_close(out["real_identity"], expected)
    out["total"].backward()  # reaches the predictor and decoder through the real films too
    assert all(torch.isfinite(p.grad).all() for p in model.view_predictor.parameters() if p.grad is not None)
    assert create_model(tiny_config()).training_losses(batch, 0, 100)["real_identity"] == 0
    assert model.training_losses(tiny_batch(real=0), 0, 100)["real_identity"] == 0


def test_pose_loss_regresses_context_and_predicted_target_angles():
    """`loss.pose`: one linear head reads the context's (lao, cran) from f_θ's embedding and the target's
    (context + action) from the predicted tokens, smooth L1 on degrees / 90; off by default (no head)."""
    torch.manual_seed(0)
    model = create_model(tiny_config(pose=1.0))
    batch = tiny_batch()
    batch["pose"] = torch.tensor([[0.0, 0.0], [-30.0, 10.0], [15.0, -10.0], [0.0, 0.0]])
    out = model.training_losses(batch, step=0, total_steps=100)
    with torch.no_grad():
        context = model.context_encoder(batch["context"]).mean(1)
        pred = model.predict_view(batch["context"], batch["d_lao"], batch["d_cran"]).mean(1)
    target = batch["pose"] + torch.stack([batch["d_lao"], batch["d_cran"]], 1)
    expected = 0.5 * (F.smooth_l1_loss(model.pose_head(context), batch["pose"] / 90)
                      + F.smooth_l1_loss(model.pose_head(pred), target / 90))
    torch.testing.assert_close(out["pose"], expected)
    out["pose"].backward()  # the pose term alone trains the head, the encoder and the predictor's action path
    for module in (model.pose_head, model.context_encoder, model.view_predictor.action):
        assert sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None) > 0
    plain = create_model(tiny_config())
    assert plain.pose_head is None and plain.training_losses(tiny_batch(), 0, 100)["pose"] == 0
    with pytest.raises(KeyError, match="pose"):
        model.training_losses(tiny_batch(), 0, 100)


def test_training_losses_without_real_images(model):
    out = model.training_losses(tiny_batch(real=0), step=0, total_steps=100)
    assert out["domain"] == 0 and "domain_cosine" not in out and torch.isfinite(out["total"])


def test_training_losses_under_autocast(model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.training_losses(tiny_batch(), step=5, total_steps=100)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())


def test_a_few_steps_decrease_the_total_loss(model):
    batch = tiny_batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    totals = []
    for step in range(20):
        loss = model.training_losses(batch, step, 20)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_target(step, 20)
        totals.append(loss.item())
    assert sum(totals[-3:]) < 0.8 * sum(totals[:3]), totals


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("name", ["cpu_small", "cpu_small_mim_only", "cpu_small_stage2", "cpu_small_stage3",
                                  "cpu_small_stage4", "cpu_small_stage5", "cpu_small_stage6", "cpu_small_stage7",
                                  "cpu_small_stage8", "cpu_small_stage9", "cpu_small_stage10", "cpu_small_stage11",
                                  "cpu_small_stage12",
                                  "cpu_small_frozen_encoders", "full_224"])
def test_committed_configs_load_and_round_trip(name):
    cfg = load_config(config_path(name))
    assert XWinConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.model.img_size % cfg.model.patch_size == 0
    if name.startswith("cpu_small_") and name != "cpu_small_mim_only":  # later stages: same model and objectives
        first = load_config(config_path("cpu_small"))  # from stage 4 on the view contrast, nothing else
        assert (cfg.model, cfg.mask) == (first.model, first.mask)
        predictor_stage = name in ("cpu_small_stage7", "cpu_small_stage8")  # predictors on stage 6's encoders
        frozen = predictor_stage or name == "cpu_small_frozen_encoders"
        stage = int(name.rpartition("stage")[2]) if "_stage" in name else (7 if frozen else 1)
        encoder_stage = stage >= 9  # stage 8's objective with both encoders trained again
        expected = dataclasses.replace(first.loss, view_contrast=0.5 if stage >= 4 else 0.0)
        if frozen:  # the encoder-only losses are off
            expected = dataclasses.replace(expected, mim=0.0, domain=0.0, variance=0.0, covariance=0.0)
        if predictor_stage or encoder_stage:  # views contrasted within one rendering, decoder on detached predictions
            expected = dataclasses.replace(expected, contrastive=0.0, view_contrast=1.0, view_contrast_tau=0.05,
                                           view_contrast_centred=False, recon_grad=False)
            assert cfg.data.shared_rendering and cfg.data.pairs_per_instance == cfg.train.batch_size == 48
            assert cfg.data.pa_fraction == 1.0  # the PA context of every prediction users make
        if stage >= 8:  # stage 7 continued with labels that ask for the exact view
            expected = dataclasses.replace(expected, label_sigma_deg=4.0)
        if encoder_stage:  # the encoder keeps the view under another jitter; domain and VICReg guards on, MIM off
            expected = dataclasses.replace(expected, encoder_view_contrast=0.5,
                                           domain={9: 0.1, 10: 0.5}.get(stage, 1.0), mim=0.0, variance=1.0,
                                           covariance=0.04)
        assert cfg.loss == expected
        assert cfg.data.online == (stage >= 6)
        assert cfg.data.rejitter == encoder_stage
        assert cfg.train.freeze == (("context_encoder", "target_encoder") if frozen else ())
        fresh_instances = stage >= 11  # each stage new deformed instances (its own seed), twice as many, wider habitus
        assert (cfg.data.augmentations, cfg.data.habitus, cfg.train.seed) == ((15, 0.15, stage - 10)
                                                                             if fresh_instances else (7, 0.1, 0))
        assert cfg.train.init is not None and cfg.data.split == "train"
    if name == "full_224":
        assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.img_size) == (768, 12, 224)
        assert (cfg.model.predictor_depth, cfg.model.predictor_width) == (3, 384)


@pytest.mark.parametrize("text,key", [
    ("loss:\n  tau: -1\n", "loss.tau"),
    ("model:\n  encoder: tiny\n  dropout: 0.1\n", "model.dropout"),
    ("train:\n  amp: 1\n", "train.amp"),
    ("model:\n  img_size: 100\n", "model.img_size"),
    ("mask:\n  target_scale: [0.3, 0.1]\n", "mask.target_scale"),
    ("mask:\n  min_keep: 1000\n", "mask.min_keep"),  # campaign 8: more than the 8 x 8 patch grid holds
    ("optim:\n  lr: 1\n", "optim"),
])
def test_bad_config_names_the_dotted_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(XWinInputError, match=f"config key '{key}'") as err:
        load_config(path)
    assert err.value.path == str(path)


def test_config_base_is_read_first_and_overridden_key_by_key(tmp_path):
    (tmp_path / "parent.yaml").write_text("loss:\n  tau: 0.2\n  mim: 0.5\ntrain:\n  total_steps: 40\n"
                                          "  warmup_steps: 4\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nloss:\n  mim: 2.0\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.loss.tau, cfg.loss.mim, cfg.train.total_steps) == (0.2, 2.0, 40)
    mim_only, full = load_config(config_path("cpu_small_mim_only")), load_config(config_path("cpu_small"))
    # The ablation differs only in its losses, a batch of 2 DRR pairs (MIM runs on the real films) and the steps of
    # the shipped model's six stages.
    assert (mim_only.model, mim_only.data) == (full.model, full.data)
    assert mim_only.train == dataclasses.replace(full.train, batch_size=2, total_steps=6 * full.train.total_steps)
    assert (mim_only.loss.mim, mim_only.loss.view, mim_only.loss.recon) == (full.loss.mim, 0.0, 0.0)


@pytest.mark.parametrize("text,problem", [("base: nowhere.yaml\n", "no such file"),
                                          ("base: loop.yaml\n", "includes itself"),
                                          ("base: [1]\n", "must be a file name")])
def test_bad_config_base(tmp_path, text, problem):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(XWinInputError, match=f"config key 'base': .*{problem}"):
        load_config(path)


def test_a_null_section_over_a_base_is_refused(tmp_path):
    """Campaign 12: `train: null` over a base config replaced the base's train section by the defaults (a tiny run
    became a long one, without a word); a section left empty in a config of its own still means the defaults."""
    (tmp_path / "base.yaml").write_text("train:\n  total_steps: 400\n")
    (tmp_path / "c.yaml").write_text("base: base.yaml\ntrain: null\n")
    with pytest.raises(XWinInputError, match=r"c\.yaml: config key 'train': empty \(null\) over the base config's "
                                             "section: remove it to keep the base's keys"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "alone.yaml").write_text("train:\n")
    assert load_config(tmp_path / "alone.yaml").train == XWinConfig.from_dict({}).train


def test_exponent_without_a_dot_is_a_number(tmp_path):
    """Campaign 12: YAML 1.1 (PyYAML) reads `lr: 1e-3` as the string '1e-3' and the config was refused; YAML 1.2 and
    every user mean 0.001."""
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-2\nloss:\n  tau: +2e-1\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.loss.tau) == (1e-3, 5e-2, 0.2)


def test_a_base_chain_too_long_is_named_at_its_top(tmp_path):
    """Campaign 12: 1,200 configs each naming the next as base ended in Python's recursion limit, blamed on the
    980th file ('not valid YAML: nested too deeply'). The chain is refused at 32 links, naming the config given;
    the shipped stages (a chain of 13) load."""
    for n in range(40):
        (tmp_path / f"c{n}.yaml").write_text(f"base: c{n + 1}.yaml\n" if n < 39 else "train:\n  lr: 1.0e-4\n")
    with pytest.raises(XWinInputError, match=r"config key 'base': a chain of more than 32 configs") as refused:
        load_config(tmp_path / "c0.yaml")
    assert Path(refused.value.path) == tmp_path / "c0.yaml"
    assert load_config(tmp_path / "c10.yaml").train.lr == 1.0e-4
    assert load_config(config_path("cpu_small_stage12")).data.augmentations == 15


def test_negative_tau_message():
    with pytest.raises(XWinInputError, match=r"^config key 'loss\.tau': must be > 0, got -1$"):
        XWinConfig.from_dict({"loss": {"tau": -1}})


def test_eval_ssim_is_the_training_ssim_at_window_7_and_matches_monai():
    """`per_image_scores` scores with `xwin.models.losses.ssim` (window 7), which replaced MONAI's SSIMMetric: same
    numbers (issue 15: one 2D SSIM), and a different score than the loss's 11 × 11 window."""
    from monai.metrics import SSIMMetric

    from xwin.eval.world import per_image_scores
    from xwin.models.losses import ssim

    gen = torch.Generator().manual_seed(3)
    true = torch.rand(5, 1, 64, 64, generator=gen)
    pred = (0.6 * true + 0.4 * torch.rand(5, 1, 64, 64, generator=gen)).clamp(0, 1)
    _, scores = per_image_scores(pred, true)
    monai = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=7)(pred, true).reshape(-1).double().numpy()
    torch.testing.assert_close(torch.from_numpy(scores), torch.from_numpy(monai), atol=1e-6, rtol=0)
    assert abs(float(ssim(pred, true)) - scores.mean()) > 1e-3  # window 11 scores otherwise
    per_image = ssim(pred, true, window=7, per_image=True)
    torch.testing.assert_close(torch.from_numpy(scores).float(), per_image, atol=1e-7, rtol=0)
