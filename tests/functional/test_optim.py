"""The differentiable inner optimizers against ``torch.optim`` fed the same gradients."""

from __future__ import annotations

import pytest
import torch

from metaloop.functional import adam, make_inner_optimizer, momentum, sgd

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


def run_ours(optimizer, grads_seq):
    params = initial_params()
    state = optimizer.init(params)
    trajectory = []
    for grads in grads_seq:
        params, state = optimizer.update(grads, state, params)
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
    new, _ = sgd(rates).update(grads, (), params)
    for k in params:
        torch.testing.assert_close(new[k], params[k] - rates[k] * grads[k])
    new, _ = sgd(torch.tensor(0.3, dtype=torch.float64)).update(grads, (), params)
    for k in params:
        torch.testing.assert_close(new[k], params[k] - 0.3 * grads[k])
    mom = momentum(rates, beta=0.5)
    new, _ = mom.update(grads, mom.init(params), params)
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
        new, state = opt.update(grads, state, params)
        new, state = opt.update(grads, state, new)
        for k in params:
            assert torch.equal(params[k].detach(), snapshot[k])
        total = sum(v.sum() for v in new.values())
        d_lr, *d_grads = torch.autograd.grad(total, [lr, *grads.values()])
        assert float(d_lr.abs()) > 0
        assert all(float(d.abs().max()) > 0 for d in d_grads)


def test_make_inner_optimizer_and_bad_arguments():
    assert make_inner_optimizer("adam", 0.1, beta1=0.8) is not None
    with pytest.raises(ValueError, match="unknown inner optimizer 'rmsprop'"):
        make_inner_optimizer("rmsprop", 0.1)
    with pytest.raises(ValueError, match="beta"):
        momentum(0.1, beta=1.0)
    with pytest.raises(ValueError, match="beta1"):
        adam(0.1, beta1=-0.1)
    with pytest.raises(ValueError, match="beta2"):
        adam(0.1, beta2=1.0)
