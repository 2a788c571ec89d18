"""Regularisers on hand-computed cases, their hooks, parameter groups, and training that reduces each term."""
import pytest
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from kan_zoo.layers import KANActivation, KANConv2d
from kan_zoo.regularizers import (RegularizerSet, l1_weight_penalty, param_groups, smoothness_penalty)


def _activation_with(coefs):
    """A bspline KANActivation whose basis coefficients are ``coefs`` (C, K); base column = 7 (ignored)."""
    coefs = torch.stack([torch.as_tensor(c, dtype=torch.float32) for c in coefs])
    act = KANActivation(coefs.shape[0], "bspline", grid_size=coefs.shape[1] - 3)
    with torch.no_grad():
        act.weight[:, 0] = 7.0
        act.weight[:, 1:] = coefs
    return act


def test_smoothness_hand_computed():
    k = torch.arange(8.0)
    # Second differences of a line are 0; of i^2 they are 2 everywhere (squared: 4); of (-1)^i they are +-4 (16).
    assert smoothness_penalty(_activation_with([3 * k - 1])).item() == pytest.approx(0.0, abs=1e-5)
    assert smoothness_penalty(_activation_with([k**2])).item() == pytest.approx(4.0)
    assert smoothness_penalty(_activation_with([k**2, (-1.0) ** k])).item() == pytest.approx((4 + 16) / 2)
    # Summed over layers.
    model = nn.Sequential(_activation_with([k**2]), _activation_with([(-1.0) ** k]))
    assert smoothness_penalty(model).item() == pytest.approx(20.0)


def test_smoothness_on_conv_runs_along_the_function_axis():
    conv = KANConv2d(2, 3, 3, basis="bspline", grid_size=2)  # 5 functions + base
    with torch.no_grad():
        coef = conv.coefficients()
        coef[:, 0] = 100.0  # the base kernel is not a basis function
        coef[:, 1:] = (torch.arange(5.0) ** 2).view(1, 5, 1, 1, 1)  # every kernel tap and edge alike
    assert smoothness_penalty(conv).item() == pytest.approx(4.0)


def test_l1_weights_hand_computed():
    act = _activation_with([[1.0, -2.0, 3.0, -4.0, 0.0, 0.0, 2.0, 0.0]])
    assert l1_weight_penalty(act).item() == pytest.approx(12.0 / 8)


def test_activation_terms_from_hooks_only_in_training():
    act = KANActivation(3, "gram")
    model = nn.Sequential(nn.Identity(), act)
    regs = RegularizerSet(act_l1=0.5, act_l2=2.0).attach(model)
    x = torch.randn(4, 3, 5)
    y = model(x)
    losses = regs.losses()
    assert set(losses) == {"act_l1", "act_l2"}
    assert losses["act_l1"].item() == pytest.approx(0.5 * y.abs().mean().item(), rel=1e-5)
    assert losses["act_l2"].item() == pytest.approx(2.0 * y.pow(2).mean().item(), rel=1e-5)
    assert regs.losses()["act_l1"].item() == 0.0  # collected terms were cleared
    model.eval()
    model(x)
    with torch.no_grad():
        model.train()(x)
    assert regs.losses()["act_l2"].item() == 0.0  # neither eval nor no-grad passes count
    regs.detach()
    model(x)
    assert not act._forward_hooks


def test_regularizer_set_errors_and_inactive():
    with pytest.raises(ValueError, match="smoothness"):
        RegularizerSet(smoothness=-1.0)
    with pytest.raises(RuntimeError, match="attach"):
        RegularizerSet(smoothness=1.0).losses()
    regs = RegularizerSet().attach(KANActivation(2))
    assert not regs.active and regs.losses() == {} and regs.total().item() == 0.0


def _tiny_model():
    return nn.Sequential(KANConv2d(2, 4, 3, padding=1, basis="bspline", norm_layer="batch"), nn.Conv2d(4, 4, 1),
                         KANActivation(4, "rbf"))


@pytest.mark.parametrize("name", ["smoothness", "l1_weights", "act_l1", "act_l2"])
def test_training_reduces_each_term(name):
    torch.manual_seed(0)
    model = _tiny_model()
    regs = RegularizerSet(**{name: 1.0}).attach(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(4, 2, 6, 6)
    values = []
    for _ in range(8):
        task = model(x).mean() * 0  # the regulariser alone drives the step
        term = regs.losses()[name]
        values.append(term.item())
        opt.zero_grad()
        (task + term).backward()
        opt.step()
    assert values[-1] < 0.9 * values[0]


def test_param_groups_with_timm_optimizer_and_scheduler():
    model = _tiny_model()
    groups = param_groups(model, basis_lr_mult=0.1, basis_wd_mult=0.0, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    basis_params = {id(p) for g in groups if g["name"].startswith("basis") for p in g["params"]}
    kan_conv, plain, act = model[0], model[1], model[2]
    assert id(kan_conv.weight) in basis_params and id(act.weight) in basis_params
    assert id(plain.weight) not in basis_params
    assert by_name["basis"]["weight_decay"] == 0.0 and by_name["other"]["weight_decay"] == 0.05
    assert by_name["other_no_decay"]["weight_decay"] == 0.0  # biases, norm scales
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    opt = create_optimizer_v2(groups, opt="adamw", lr=1e-3, weight_decay=0.05)
    sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=10, warmup_epochs=0)
    sched.step(1)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["basis"] == pytest.approx(0.1 * lrs["other"])
    direct = param_groups(model, basis_lr_mult=3.0, lr=1e-3)
    assert {g["name"]: g["lr"] for g in direct}["basis"] == pytest.approx(3e-3)
