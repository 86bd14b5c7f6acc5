"""The differentiable inner optimizers against ``torch.optim`` fed the same gradients, and the
transforms they are composed of against hand computations: chain order, step counts,
per-step rates (reusing the last past the end), weight decay towards zero or ``theta_0``,
vmap against a loop, and hypergradients through the rates by ``gradcheck``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaloop.functional.optim import (
    ChainState,
    LearnedRates,
    adam,
    add_decayed_weights,
    apply_updates,
    by_name,
    chain,
    momentum,
    scale_by_learning_rate,
    sgd,
    step_count,
    trace,
)

torch.set_num_threads(1)


def gradient_sequence(steps: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(steps):
        grads = {
            "w": torch.randn(3, 4, generator=g, dtype=torch.float64),
            "b": torch.randn(4, generator=g, dtype=torch.float64),
        }
        if t == 1:
            grads["b"][0] = 0.0  # an exact zero gradient entry
        out.append(grads)
    return out


def initial_params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(42)
    return {
        "w": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "b": torch.randn(4, generator=g, dtype=torch.float64),
    }


def step(optimizer, grads, state, params):
    """One inner step: ``theta + update(g)``."""
    updates, state = optimizer.update(grads, state, params)
    return apply_updates(params, updates), state


def run_ours(optimizer, grads_seq):
    params = initial_params()
    state = optimizer.init(params)
    trajectory = []
    for grads in grads_seq:
        params, state = step(optimizer, grads, state, params)
        trajectory.append(params)
    return trajectory


def run_torch(make, grads_seq):
    params = {k: v.clone().requires_grad_() for k, v in initial_params().items()}
    opt = make(list(params.values()))
    trajectory = []
    for grads in grads_seq:
        for k, p in params.items():
            p.grad = grads[k].clone()
        opt.step()
        trajectory.append({k: p.detach().clone() for k, p in params.items()})
    return trajectory


def assert_same_trajectory(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14)


def test_sgd_equals_torch_sgd():
    seq = gradient_sequence(5)
    assert_same_trajectory(
        run_ours(sgd(0.1), seq), run_torch(lambda p: torch.optim.SGD(p, lr=0.1), seq)
    )


@pytest.mark.parametrize(
    ("beta", "nesterov"), [(0.0, False), (0.5, False), (0.9, False), (0.5, True), (0.9, True)]
)
def test_momentum_equals_torch_sgd_momentum(beta, nesterov):
    seq = gradient_sequence(6, seed=1)
    ours = run_ours(momentum(0.05, beta=beta, nesterov=nesterov), seq)
    theirs = run_torch(lambda p: torch.optim.SGD(p, lr=0.05, momentum=beta, nesterov=nesterov), seq)
    assert_same_trajectory(ours, theirs)


@pytest.mark.parametrize(("beta1", "beta2", "eps"), [(0.9, 0.999, 1e-8), (0.5, 0.9, 1e-3)])
def test_adam_equals_torch_adam(beta1, beta2, eps):
    """Our Adam adds ``eps_root`` under the square root (finite derivatives at zero
    gradients); with ``eps_root=0`` it is exactly ``torch.optim.Adam``."""
    seq = gradient_sequence(7, seed=2)
    ours = run_ours(adam(0.01, beta1=beta1, beta2=beta2, eps=eps, eps_root=0.0), seq)
    theirs = run_torch(lambda p: torch.optim.Adam(p, lr=0.01, betas=(beta1, beta2), eps=eps), seq)
    assert_same_trajectory(ours, theirs)


def test_adam_default_eps_root_is_a_tiny_perturbation():
    seq = gradient_sequence(4, seed=3)
    with_root = run_ours(adam(0.01), seq)
    without = run_ours(adam(0.01, eps_root=0.0), seq)
    for a, b in zip(with_root, without):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_per_parameter_rates_and_tensor_rates():
    """Meta-SGD style rates: a dict of tensors shaped like the parameters, and a scalar
    tensor, both equal to the element-wise formula ``theta - alpha o g``."""
    params, grads = initial_params(), gradient_sequence(1)[0]
    rates = {k: torch.rand_like(v) for k, v in params.items()}
    opt = sgd(rates)
    new, _ = step(opt, grads, opt.init(params), params)
    for k in params:
        torch.testing.assert_close(new[k], params[k] - rates[k] * grads[k])
    opt = sgd(torch.tensor(0.3, dtype=torch.float64))
    new, _ = step(opt, grads, opt.init(params), params)
    for k in params:
        torch.testing.assert_close(new[k], params[k] - 0.3 * grads[k])
    mom = momentum(rates, beta=0.5)
    new, _ = step(mom, grads, mom.init(params), params)
    for k in params:
        torch.testing.assert_close(new[k], params[k] - rates[k] * grads[k])


def test_updates_are_pure_and_differentiable():
    """No tensor is modified in place, and the update is differentiable with respect to the
    gradient, the state and a learning-rate tensor."""
    params = {k: v.requires_grad_() for k, v in initial_params().items()}
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    for opt in (sgd(lr), momentum(lr, 0.9), adam(lr)):
        grads = {k: (2 * v).detach().requires_grad_() for k, v in params.items()}
        snapshot = {k: v.detach().clone() for k, v in params.items()}
        state = opt.init(params)
        new, state = step(opt, grads, state, params)
        new, state = step(opt, grads, state, new)
        for k in params:
            assert torch.equal(params[k].detach(), snapshot[k])
        total = sum(v.sum() for v in new.values())
        d_lr, *d_grads = torch.autograd.grad(total, [lr, *grads.values()])
        assert float(d_lr.abs()) > 0
        assert all(float(d.abs().max()) > 0 for d in d_grads)


def test_by_name_and_bad_arguments():
    assert by_name("adam", 0.1, beta1=0.8) is not None
    with pytest.raises(ValueError, match="unknown inner optimizer 'rmsprop'"):
        by_name("rmsprop", 0.1)
    with pytest.raises(ValueError, match=r"inner optimizer 'sgd'.*beta"):
        by_name("sgd", 0.1, beta=0.9)
    with pytest.raises(ValueError, match="learning rate must be a finite number >= 0"):
        sgd(-0.1)
    with pytest.raises(ValueError, match="learning rate must be a number, a tensor"):
        sgd("0.1")
    with pytest.raises(ValueError, match="toward must be one of zero, init"):
        add_decayed_weights(0.1, toward="theta")
    with pytest.raises(ValueError, match="weight decay coef must be a finite number >= 0"):
        add_decayed_weights(-1.0)
    with pytest.raises(ValueError, match="chain takes one or more"):
        chain()
    with pytest.raises(ValueError, match="no learning rate for parameter 'b'"):
        opt = sgd({"w": torch.tensor(0.1)})
        step(opt, gradient_sequence(1)[0], opt.init(initial_params()), initial_params())
    with pytest.raises(ValueError, match="granularity must be one of"):
        LearnedRates(nn.Linear(2, 1), ["weight"], 0.1, granularity="row")
    with pytest.raises(ValueError, match="beta"):
        momentum(0.1, beta=1.0)
    with pytest.raises(ValueError, match="beta1"):
        adam(0.1, beta1=-0.1)
    with pytest.raises(ValueError, match="beta2"):
        adam(0.1, beta2=1.0)


def test_chain_applies_transforms_in_order():
    """``chain(decay, rate)`` steps ``theta - a (g + c theta)``; ``chain(rate, decay)`` steps
    ``theta + (-a g) + c theta`` (the decay then acts on the already scaled update)."""
    params, grads = initial_params(), gradient_sequence(1)[0]
    a, c = 0.1, 0.3
    decay_first = chain(add_decayed_weights(c), scale_by_learning_rate(a))
    rate_first = chain(scale_by_learning_rate(a), add_decayed_weights(c))
    new_a, state = step(decay_first, grads, decay_first.init(params), params)
    new_b, _ = step(rate_first, grads, rate_first.init(params), params)
    for k in params:
        torch.testing.assert_close(new_a[k], params[k] - a * (grads[k] + c * params[k]))
        torch.testing.assert_close(new_b[k], params[k] - a * grads[k] + c * params[k])
    assert isinstance(state, ChainState) and step_count(state) == 1


def test_step_count_is_carried_by_every_chained_optimizer():
    params, seq = initial_params(), gradient_sequence(3)
    for opt in (sgd(0.1), momentum(0.1), adam(0.1), by_name("sgd", 0.1, weight_decay=0.1)):
        state = opt.init(params)
        assert step_count(state) == 0
        p = params
        for t, grads in enumerate(seq, start=1):
            p, state = step(opt, grads, state, p)
            assert step_count(state) == t
    with pytest.raises(ValueError, match="step_count needs the state of a chain"):
        step_count(trace().init(params))


def test_per_step_rates_select_their_step_and_reuse_the_last():
    """Rates ``[S]`` (one tensor, a dict per parameter, a learned module, a schedule): step
    ``t`` moves by ``-alpha[min(t, S-1)] g_t``, checked over 5 steps with ``S = 3``."""
    params, seq = initial_params(), gradient_sequence(5, seed=4)
    alphas = torch.tensor([0.3, 0.2, 0.05], dtype=torch.float64)
    per_layer = {"w": alphas, "b": 2 * alphas}
    module = LearnedRates(nn.Linear(4, 3).double(), ["weight", "bias"], 0.1, "tensor", steps=3)
    with torch.no_grad():
        module["weight"].copy_(alphas)
        module["bias"].copy_(2 * alphas)
    renamed = {"weight": "w", "bias": "b"}
    cases = [
        (sgd(alphas, per_step=True), {"w": alphas, "b": alphas}, params),
        (sgd(per_layer, per_step=True), per_layer, params),
        (sgd(lambda t: {"w": alphas[min(t, 2)], "b": 2 * alphas[min(t, 2)]}), per_layer, params),
    ]
    named = {renamed_k: params[v] for renamed_k, v in renamed.items()}
    for opt, expected_rates, start in cases:
        got = run_steps(opt, start, seq)
        expected = dict(start)
        for t, grads in enumerate(seq):
            expected = {k: v - expected_rates[k][min(t, 2)] * grads[k] for k, v in expected.items()}
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-14)
    # the module of learned rates, under the parameter names of its model
    got = run_steps(sgd(module, per_step=True), named, [rename(g, renamed) for g in seq])
    expected = dict(named)
    for t, grads in enumerate(seq):
        rates = {"weight": alphas[min(t, 2)], "bias": 2 * alphas[min(t, 2)]}
        grads = rename(grads, renamed)
        expected = {k: v - rates[k] * grads[k] for k, v in expected.items()}
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-14)


def rename(tensors, names):
    return {new: tensors[old] for new, old in names.items()}


def run_steps(opt, params, seq):
    state = opt.init(params)
    for grads in seq:
        params, state = step(opt, grads, state, params)
    return params


@pytest.mark.parametrize("toward", ["zero", "init"])
def test_weight_decay_against_a_hand_computation(toward):
    """Two SGD steps with decay ``c`` towards ``a`` (``0`` or ``theta_0``):
    ``theta_{t+1} = theta_t - alpha (g_t + c (theta_t - a))``, written out by hand."""
    params, (g0, g1) = initial_params(), gradient_sequence(2, seed=5)
    alpha, c = 0.1, 0.5
    opt = sgd(alpha, weight_decay=c, decay_toward=toward)
    got = run_steps(opt, params, [g0, g1])
    for k, theta0 in params.items():
        anchor = theta0 if toward == "init" else torch.zeros_like(theta0)
        theta1 = theta0 - alpha * (g0[k] + c * (theta0 - anchor))
        theta2 = theta1 - alpha * (g1[k] + c * (theta1 - anchor))
        torch.testing.assert_close(got[k], theta2, rtol=1e-12, atol=1e-14)
    # towards theta_0 with zero gradients: theta_0 is a fixed point; towards zero it shrinks
    zeros = [{k: torch.zeros_like(v) for k, v in params.items()}] * 3
    still = run_steps(opt, params, zeros)
    for k, theta0 in params.items():
        expected = theta0 if toward == "init" else theta0 * (1 - alpha * c) ** 3
        torch.testing.assert_close(still[k], expected, rtol=1e-12, atol=1e-14)


def test_decay_towards_init_passes_meta_gradient_to_theta_0():
    """``theta_1 = theta_0 - a (g + c (theta_0 - theta_0))`` has ``d theta_1/d theta_0 = I``
    with ``g`` fixed: the anchor's path cancels the decay's."""
    params = {k: v.requires_grad_() for k, v in initial_params().items()}
    grads = gradient_sequence(1)[0]
    new = run_steps(sgd(0.1, weight_decay=0.5, decay_toward="init"), params, [grads])
    d = torch.autograd.grad(sum(v.sum() for v in new.values()), list(params.values()))
    for g in d:
        torch.testing.assert_close(g, torch.ones_like(g))


def test_hypergradient_through_per_step_rates_and_decay_by_gradcheck():
    """The final parameters after 4 steps (momentum, decay towards ``theta_0``, per-layer
    per-step rates ``[3]``) as a function of the rates and of ``theta_0``: float64 central
    differences agree with autograd (``torch.autograd.gradcheck``)."""
    seq = gradient_sequence(4, seed=6)
    start = initial_params()

    def final(w_rates, b_rates, w0):
        opt = momentum(
            {"w": w_rates, "b": b_rates},
            beta=0.5,
            per_step=True,
            weight_decay=0.3,
            decay_toward="init",
        )
        params = {"w": w0, "b": start["b"]}
        state = opt.init(params)
        for grads in seq:
            # a parameter-dependent gradient, so that second-order terms matter
            grads = {k: g + torch.tanh(params[k]) for k, g in grads.items()}
            params, state = step(opt, grads, state, params)
        return params["w"].pow(2).sum() + params["b"].pow(2).sum()

    w_rates = torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64, requires_grad=True)
    b_rates = torch.tensor([0.3, 0.1, 0.2], dtype=torch.float64, requires_grad=True)
    w0 = start["w"].clone().requires_grad_()
    assert torch.autograd.gradcheck(final, (w_rates, b_rates, w0))


def test_transforms_under_vmap_equal_a_loop():
    """Adam with per-step rates and decay towards ``theta_0``, 3 steps, over a batch of 4
    independent parameter sets: ``torch.func.vmap`` gives the loop's numbers."""
    g = torch.Generator().manual_seed(7)
    batch = {"w": torch.randn(4, 3, 2, generator=g, dtype=torch.float64)}
    rates = torch.tensor([0.1, 0.01], dtype=torch.float64)
    opt = adam(rates, per_step=True, weight_decay=0.2, decay_toward="init")

    def run(w):
        params = {"w": w}
        state = opt.init(params)
        for _ in range(3):
            params, state = step(opt, {"w": torch.sin(params["w"])}, state, params)
        return params["w"]

    vmapped = torch.func.vmap(run)(batch["w"])
    looped = torch.stack([run(w) for w in batch["w"]])
    torch.testing.assert_close(vmapped, looped, rtol=1e-12, atol=1e-14)
