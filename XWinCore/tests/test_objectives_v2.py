"""World model v2: geometry alignment labels, collapse guards, effective rank, the context-aware decoder, MIM on
real films, and CPU bfloat16 only where the CPU has it."""
from __future__ import annotations

import math
import platform

import pytest
import torch

from xwin.config import LossConfig, MaskConfig, ModelConfig, XWinConfig
from xwin.models import create_model
from xwin.models.losses import (
    beam_directions,
    effective_rank,
    geometry_labels,
    soft_info_nce,
    variance_covariance,
    view_contrast_loss,
)
from xwin.train.loop import use_bf16

torch.set_num_threads(1)

TINY = dict(embed_dim=32, depth=1, num_heads=2, img_size=32, predictor_depth=1, predictor_width=32,
            predictor_heads=2, mask_predictor_depth=1, mask_predictor_width=32, mask_predictor_heads=2,
            decoder_depth=1, decoder_width=32, decoder_heads=2, domain_hidden=16)


def tiny(**kw) -> XWinConfig:
    model = {k: kw.pop(k) for k in list(kw) if k in ModelConfig.__dataclass_fields__}
    return XWinConfig(model=ModelConfig(**{**TINY, **model}), loss=LossConfig(**kw),
                      mask=MaskConfig(num_targets=1, min_keep=1))


def test_beam_directions_are_perpendicular_90_degrees_apart():
    d = beam_directions(torch.tensor([[0.0, 0.0], [90.0, 0.0], [0.0, 90.0], [45.0, 0.0]]))
    assert torch.allclose(d.norm(dim=1), torch.ones(4))
    assert abs(float(d[0] @ d[1])) < 1e-6 and abs(float(d[0] @ d[2])) < 1e-6
    assert float(d[0] @ d[3]) == pytest.approx(math.cos(math.radians(45)), abs=1e-6)


def test_geometry_labels_share_mass_over_copies_at_one_angle_and_never_cross_patients():
    """Views 0, 1: one patient at LAO 0 (two deformed copies); view 2: same patient at LAO 15; view 3: another
    patient at LAO 0. σ = 7.5°: 15° off weighs exp(−2) of an exact match."""
    pose = torch.tensor([[0.0, 0.0], [0.0, 0.0], [15.0, 0.0], [0.0, 0.0]])
    a = geometry_labels(pose, torch.tensor([0, 0, 0, 1]), 7.5)
    w = math.exp(-2.0)
    assert a[0].tolist() == pytest.approx([1 / (2 + w), 1 / (2 + w), w / (2 + w), 0.0], abs=1e-4)
    assert a[3].tolist() == pytest.approx([0, 0, 0, 1.0])
    assert torch.allclose(a.sum(1), torch.ones(4))


def test_variance_covariance_hand_cases():
    g = torch.Generator().manual_seed(0)
    wide = 3.0 * torch.randn(20000, 4, generator=g)
    v, c = variance_covariance(wide)
    assert float(v) == 0.0  # every std ≈ 3 > 1: no hinge
    assert float(c) < 0.05 * 9  # independent columns: off-diagonal covariance ≈ 0
    v, _ = variance_covariance(torch.ones(10, 4))
    assert float(v) == pytest.approx(1 - math.sqrt(1e-4), abs=1e-6)  # collapsed: full hinge
    x = torch.randn(20000, 1, generator=g)
    _, c = variance_covariance(torch.cat([x, x], dim=1))  # C = [[1, 1], [1, 1]]: Σ off-diag² / D = 2 / 2
    assert float(c) == pytest.approx(1.0, rel=0.05)


def test_effective_rank_of_a_line_and_of_a_flat_spectrum():
    line = torch.arange(10.0)[:, None] * torch.tensor([[1.0, 2.0, -1.0]])
    assert float(effective_rank(line)) == pytest.approx(1.0, abs=1e-3)
    flat = torch.cat([torch.eye(4), -torch.eye(4)])  # centred rows ±e_i: four equal singular values
    assert float(effective_rank(flat)) == pytest.approx(4.0, abs=1e-4)


def batch(b=4, s=32, real=2):
    g = torch.Generator().manual_seed(1)
    out = dict(context=torch.rand(b, 1, s, s, generator=g), target=torch.rand(b, 1, s, s, generator=g),
               d_lao=torch.tensor([0.0, 30.0, -20.0, 45.0]), d_cran=torch.zeros(4), group=torch.tensor([0, 0, 1, 1]),
               patient=torch.tensor([0, 0, 0, 1]), pose=torch.zeros(4, 2))
    if real:
        out["real"] = torch.rand(real, 1, s, s, generator=g)
    return out


def test_geometry_alignment_uses_the_target_poses_and_needs_them():
    torch.manual_seed(0)
    model = create_model(tiny(alignment_labels="geometry", contrastive_latent="tokens"))
    out = model.training_losses(batch(), 0, 10)
    from xwin.models.losses import view_latent
    b = batch()
    pred = model.predict_view(b["context"], b["d_lao"], b["d_cran"])
    with torch.no_grad():
        tgt = model.target_encoder(b["target"])
    labels = geometry_labels(torch.stack([b["d_lao"], b["d_cran"]], 1), b["patient"], 7.5)
    expected = soft_info_nce(view_latent(pred), view_latent(tgt), labels, 0.1)
    assert float(out["contrastive"].detach()) == pytest.approx(float(expected.detach()), rel=1e-4)
    b.pop("pose")
    with pytest.raises(KeyError, match="pose"):
        model.training_losses(b, 0, 10)


def test_view_contrast_hand_case_sees_only_what_differs_between_views_of_one_volume():
    """Volume 0: two views 30° apart whose latents share a large anatomy vector s; volume 1: one view whose latent
    equals volume 0's first (a cross-volume pair the loss must not see). With a perfect prediction the centred
    latents are ±u, S = ±1/τ, and each of volume 0's rows costs −[a log σ₊ + (1 − a) log σ₋] with a = 1/(1 + e^{−8})
    (30° at σ = 7.5°) and σ₊ = 1/(1 + e^{−2/τ}); volume 1's row costs 0: L = ⅔ of a row."""
    u = torch.tensor([1.0, 0.0, 0.0, 0.0])
    s = torch.tensor([0.0, 5.0, 5.0, 0.0])
    target = torch.stack([s + u, s - u, s + u])
    pose = torch.tensor([[0.0, 0.0], [30.0, 0.0], [0.0, 0.0]])
    group = torch.tensor([0, 0, 1])
    tau = 0.1
    a = 1 / (1 + math.exp(-8.0))
    log_plus, log_minus = -math.log1p(math.exp(-2 / tau)), -2 / tau - math.log1p(math.exp(-2 / tau))
    expected = 2 / 3 * -(a * log_plus + (1 - a) * log_minus)
    assert float(view_contrast_loss(target, target, pose, group, 7.5, tau)) == pytest.approx(expected, rel=1e-5)
    # the shared anatomy does not count: moving both volumes' latents by their own offsets changes nothing
    shift = torch.stack([s * 3, s * 3, -s])
    moved = view_contrast_loss(target + shift, target + shift, pose, group, 7.5, tau)
    assert float(moved) == pytest.approx(expected, rel=1e-5)
    # ... while on raw latents (the plain alignment) the same prediction is far from certain of its view
    raw = soft_info_nce(target, target, geometry_labels(pose, group, 7.5), tau)
    assert float(raw) > 10 * expected
    # a prediction that swaps the two views costs more than the right one
    swapped = view_contrast_loss(target[[1, 0, 2]], target, pose, group, 7.5, tau)
    assert float(swapped) > 2 / 3 * 1.9 / tau  # two of three rows at ≈ 2/τ
    # uncentred: the raw latents s ± u (cosine 49/51) compared within each group only, volume 1's lone row adds 0
    gap = 2 / 51 / tau

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x))

    uncentred = 2 / 3 * -(a * log_sigmoid(gap) + (1 - a) * log_sigmoid(-gap))
    assert float(view_contrast_loss(target, target, pose, group, 7.5, tau, centred=False)) == pytest.approx(
        uncentred, rel=1e-5)


def test_view_contrast_in_the_losses_uses_the_volume_ids_and_needs_them():
    torch.manual_seed(0)
    model = create_model(tiny(view_contrast=1.0))
    b = batch()
    out = model.training_losses(b, 0, 10)
    from xwin.models.losses import view_latent
    pred = model.predict_view(b["context"], b["d_lao"], b["d_cran"])
    with torch.no_grad():
        tgt = model.target_encoder(b["target"])
    expected = view_contrast_loss(view_latent(pred), view_latent(tgt), torch.stack([b["d_lao"], b["d_cran"]], 1),
                                  b["group"], 7.5, 0.1)
    assert float(out["view_contrast"].detach()) == pytest.approx(float(expected.detach()), rel=1e-4)
    assert float(out["view_contrast"].detach()) > 0
    assert float(create_model(tiny()).training_losses(b, 0, 10)["view_contrast"]) == 0.0
    b.pop("group")
    with pytest.raises(KeyError, match="group"):
        model.training_losses(b, 0, 10)


def test_encoder_view_contrast_compares_the_context_encoder_on_the_targets_with_their_target_latents():
    torch.manual_seed(0)
    model = create_model(tiny(encoder_view_contrast=1.0))
    b = batch()
    out = model.training_losses(b, 0, 10)
    from xwin.models.losses import view_latent
    with torch.no_grad():
        mine = model.context_encoder(b["target"])
        tgt = model.target_encoder(b["target"])
    pose = torch.stack([b["d_lao"], b["d_cran"]], 1)  # the batch's contexts sit at pose (0, 0)
    expected = view_contrast_loss(view_latent(mine), view_latent(tgt), pose, b["group"], 7.5, 0.1, centred=False)
    assert float(out["encoder_view_contrast"].detach()) == pytest.approx(float(expected), rel=1e-4)
    # the gradient reaches the context encoder through the target images, not only through the contexts
    out["encoder_view_contrast"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.context_encoder.parameters())
    assert float(create_model(tiny()).training_losses(b, 0, 10)["encoder_view_contrast"]) == 0.0
    # with the targets rendered again under another jitter (data.rejitter) the context encoder sees those instead
    b["target_rejittered"] = b["target"].flip(-1)
    with torch.no_grad():
        expected = view_contrast_loss(view_latent(model.context_encoder(b["target_rejittered"])), view_latent(tgt),
                                      pose, b["group"], 7.5, 0.1, centred=False)
        assert float(model.training_losses(b, 0, 10)["encoder_view_contrast"]) == pytest.approx(float(expected),
                                                                                                rel=1e-4)
    b.pop("group")
    with pytest.raises(KeyError, match="group"):
        model.training_losses(b, 0, 10)


def test_collapse_guards_and_effective_rank_in_the_losses():
    torch.manual_seed(0)
    model = create_model(tiny(variance=1.0, covariance=0.1))
    out = model.training_losses(batch(), 0, 10)
    emb = model.context_encoder(torch.cat([batch()["context"], batch()["real"]])).mean(1)
    v, c = (t.detach() for t in variance_covariance(emb))
    assert float(out["variance"].detach()) == pytest.approx(float(v), rel=1e-4)
    assert float(out["covariance"].detach()) == pytest.approx(float(c), rel=1e-4)
    assert 1.0 <= float(out["effective_rank"].detach()) <= 4.0
    out["variance"].backward()
    assert model.context_encoder.vit.patch_embed.proj.weight.grad.abs().sum() > 0
    off = create_model(tiny()).training_losses(batch(), 0, 10)
    assert float(off["variance"]) == 0.0 and float(off["covariance"]) == 0.0


def test_mim_on_real_films_only():
    torch.manual_seed(0)
    model = create_model(tiny(mim_on="real"))
    assert float(model.training_losses(batch(real=0), 0, 10)["mim"]) == 0.0
    b = batch()
    out = model.training_losses(b, 3, 10)
    with torch.no_grad():
        targets = model.target_encoder(b["real"])
    assert float(out["mim"].detach()) == pytest.approx(float(model._mim(b["real"], targets, 3).detach()), rel=1e-4)


def test_context_decoder_starts_as_the_token_decoder_and_then_uses_the_context():
    torch.manual_seed(0)
    model = create_model(tiny(decoder_context=4))
    tokens = torch.randn(2, 4, 32)
    context = torch.rand(2, 1, 32, 32)
    plain = model.decode(tokens)
    assert torch.equal(model.decode(tokens, context, 30.0), plain)  # zero-initialised last conv
    torch.nn.init.normal_(model.decoder.context.out.weight, std=0.1)
    a, b = model.decode(tokens, context, 30.0), model.decode(tokens, 1 - context, 30.0)
    assert (a - b).abs().max() > 1e-3  # the context now shapes the output
    assert (a - model.decode(tokens, context, -30.0)).abs().max() > 1e-4  # and so does the action
    assert torch.equal(model.decode(tokens), plain)  # without a context: the tokens-only decode


def test_bf16_autocast_only_where_the_cpu_has_it(monkeypatch):
    """oneDNN's bfloat16 check is true on any AVX-512 x86 CPU, which emulates it (2.7× slower than float32)."""
    assert not use_bf16(False, torch.device("cpu"))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        assert use_bf16(True, torch.device("cpu")) is native
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # Arm: oneDNN's check is the hardware's
    for native in (False, True):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert use_bf16(True, torch.device("cpu")) is native
    assert use_bf16(True, torch.device("cuda"))
