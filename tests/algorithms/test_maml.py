"""MAML / FOMAML against independent truths.

* the second-order meta-gradient against central finite differences in float64 (1 and 3
  inner steps, and through the state of momentum and Adam inner optimizers);
* FOMAML's meta-gradient against the query gradient at ``theta'`` computed by a
  hand-written SGD loop with plain ``torch.autograd``;
* on 1-D quadratics, the second-order minus first-order gap against the closed-form
  Hessian term;
* one-step MAML trained to convergence against the closed-form minimiser of its objective
  (1-D quadratics and linear regression);
* a short sinusoid run against the jointly trained, fine-tuned baseline;
* per-step batch norm (MAML++ "BNWB"): meta-gradient, evaluation curve and adapted
  predictor against a hand-written per-task loop that selects the norm rows itself.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import metaloop as ml
from metaloop.algorithms import FOMAML, MAML, JointTraining
from metaloop.diagnostics import oracles
from metaloop.models import MLP, Conv4, PerStepBatchNorm2d, set_norm_step
from metaloop.tasks import LinearRegression, Quadratic, Sinusoid, TaskBatch

torch.set_num_threads(1)


# -- helpers ------------------------------------------------------------------------------
def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]
    )


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # tanh: smooth, so every Hessian block is non-zero and finite differences are clean
    return MLP(1, 1, hidden=(4, 4), activation="tanh").double()


def sine_batch(tasks: int = 2, seed: int = 0):
    family = Sinusoid(shots=5, queries=5, dtype=torch.float64)
    return family.sample(tasks, torch.Generator().manual_seed(seed))


# -- finite differences -------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_matches_finite_differences(steps, numeric_gradient):
    model = small_mlp()
    learner = MAML(model, inner_lr=0.05, inner_steps=steps)
    batch = sine_batch()
    params = list(model.parameters())
    loss, _ = learner.meta_loss(batch)
    analytic = flat_grad(loss, params)
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    assert rel_err(analytic, numeric) < 1e-5
    # the check is discriminative: the first-order approximation is far from it
    fo_loss, _ = FOMAML(model, inner_lr=0.05, inner_steps=steps).meta_loss(batch)
    assert torch.allclose(fo_loss, loss, rtol=1e-12)
    assert rel_err(flat_grad(fo_loss, params), numeric) > 1e-3


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        ("momentum", {"beta": 0.9}),
        ("momentum", {"beta": 0.5, "nesterov": True}),
        ("adam", {}),
    ],
)
def test_maml_meta_gradient_through_inner_optimizer_state(optimizer, kwargs, numeric_gradient):
    """3 inner steps, so the momentum buffer / Adam moments carry gradient between steps."""
    model = small_mlp(1)
    learner = MAML(
        model,
        inner_lr=0.02,
        inner_steps=3,
        inner_optimizer=optimizer,
        inner_optimizer_kwargs=kwargs,
    )
    batch = sine_batch(seed=1)
    params = list(model.parameters())
    loss, _ = learner.meta_loss(batch)
    analytic = flat_grad(loss, params)
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    assert rel_err(analytic, numeric) < 1e-5


# -- FOMAML -------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 3])
def test_fomaml_gradient_is_query_gradient_at_adapted_params(steps):
    """FOMAML's meta-gradient is ``(1/T) sum_i grad L_query_i(theta'_i)``, where ``theta'_i``
    comes from ``steps`` plain SGD steps; both computed here with ``torch.autograd`` only."""
    model = small_mlp(2)
    alpha = 0.05
    batch = sine_batch(tasks=3, seed=2)
    loss, _ = FOMAML(model, inner_lr=alpha, inner_steps=steps).meta_loss(batch)
    params = list(model.parameters())
    got = flat_grad(loss, params)

    expected = torch.zeros_like(got)
    expected_loss = 0.0
    for task in batch:
        fast = [p.detach().clone().requires_grad_() for p in params]
        for _ in range(steps):
            support = nn.functional.mse_loss(
                torch.func.functional_call(
                    model, dict(zip(dict(model.named_parameters()), fast)), (task.support_x,)
                ),
                task.support_y,
            )
            grads = torch.autograd.grad(support, fast)
            fast = [(f - alpha * g).detach().requires_grad_() for f, g in zip(fast, grads)]
        names = [n for n, _ in model.named_parameters()]
        query = nn.functional.mse_loss(
            torch.func.functional_call(model, dict(zip(names, fast)), (task.query_x,)),
            task.query_y,
        )
        expected += flat_grad(query, fast) / len(batch)
        expected_loss += float(query.detach()) / len(batch)
    assert float(loss.detach()) == pytest.approx(expected_loss, rel=1e-12)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # MAML(first_order=True) is the same learner
    loss2, _ = MAML(model, inner_lr=alpha, inner_steps=steps, first_order=True).meta_loss(batch)
    torch.testing.assert_close(flat_grad(loss2, params), got, rtol=0, atol=0)


# -- per-step batch norm (MAML++ "BNWB") ------------------------------------------------------
PER_STEP_K = 2  # inner steps; the model has K + 2 rows, so row K + 1 is never used


def per_step_conv() -> nn.Module:
    """Two conv blocks with per-step batch norm, float64.  The affine rows are made to
    differ, so a forward with the wrong row changes the numbers."""
    torch.manual_seed(3)
    model = Conv4(
        1, 3, hidden=3, image_size=8, blocks=2, norm="batch_per_step", steps=PER_STEP_K + 2
    ).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PerStepBatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
    return model


def image_tasks(tasks: int = 2, ways: int = 3, shots: int = 2, queries: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(4)
    sx = torch.randn(tasks, ways * shots, 1, 8, 8, generator=g, dtype=torch.float64)
    qx = torch.randn(tasks, ways * queries, 1, 8, 8, generator=g, dtype=torch.float64)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return TaskBatch(sx, sy, qx, qy, ways=ways)


def per_step_reference(model: nn.Module, batch: TaskBatch, alpha: float, steps: int):
    """Second-order MAML by hand: a loop over tasks, plain SGD steps with
    ``torch.autograd.grad(create_graph=True)``, the norm row set explicitly (row ``k`` for
    the support forward of step ``k``, row ``t`` for the query forward after ``t`` steps).
    Returns the meta-loss and the query losses ``[T, steps + 1]`` after ``0..steps`` steps."""
    names = [n for n, _ in model.named_parameters()]
    ce = nn.functional.cross_entropy
    meta, curves = 0.0, []
    for task in batch:
        fast = list(model.parameters())
        curve = []
        for k in range(steps + 1):
            set_norm_step(model, k)
            params = dict(zip(names, fast))
            curve.append(ce(functional_call(model, params, (task.query_x,)), task.query_y))
            if k == steps:
                break
            support = ce(functional_call(model, params, (task.support_x,)), task.support_y)
            grads = torch.autograd.grad(support, fast, create_graph=True)
            fast = [f - alpha * g for f, g in zip(fast, grads)]
        meta = meta + curve[-1] / len(batch)
        curves.append(torch.stack(curve))
    return meta, torch.stack(curves)


@pytest.mark.parametrize(
    "options",
    [
        {"vectorize": "loop"},
        {"vectorize": "vmap"},
        {"vectorize": "loop", "checkpoint": True},
        {"vectorize": "vmap", "checkpoint": True},
    ],
)
def test_maml_per_step_batch_norm_meta_gradient(options):
    """Row k in the support forward of step k, row K in the query forward: the learner's
    meta-gradient equals the hand-written loop's, rows 0..K get gradient, later rows none."""
    alpha, batch = 0.3, image_tasks()
    reference = per_step_conv()
    ref_loss, _ = per_step_reference(reference, batch, alpha, PER_STEP_K)
    expected = flat_grad(ref_loss, list(reference.parameters()))

    model = per_step_conv()
    learner = MAML(model, inner_lr=alpha, inner_steps=PER_STEP_K, loss="cross_entropy", **options)
    assert learner.per_step_norm and not MAML(small_mlp()).per_step_norm
    set_norm_step(model, 3)  # a stale row must not matter
    loss, _ = learner.meta_loss(batch)
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-12)
    loss.backward()
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)

    norms = [m for m in model.modules() if isinstance(m, PerStepBatchNorm2d)]
    assert len(norms) == 2
    for m in norms:
        for p in (m.weight, m.bias):
            per_row = p.grad.abs().sum(dim=1)
            assert (per_row[: PER_STEP_K + 1] > 0).all(), per_row
            assert (per_row[PER_STEP_K + 1 :] == 0).all(), per_row


@pytest.mark.parametrize("vectorize", ["loop", "vmap"])
def test_maml_per_step_batch_norm_evaluation_and_adapt(vectorize):
    """``evaluate_batch`` at steps (0, 1, 2) uses rows 0, 1, 2 for the query (and row k for
    each support step); ``adapt(steps=t)``'s predictor uses row t."""
    alpha, batch = 0.3, image_tasks()
    model = per_step_conv()
    curves = per_step_reference(model, batch, alpha, PER_STEP_K)[1].detach()
    learner = MAML(
        model, inner_lr=alpha, inner_steps=PER_STEP_K, loss="cross_entropy", vectorize=vectorize
    )
    set_norm_step(model, 3)
    metrics = learner.evaluate_batch(batch, steps=(0, 1, 2))
    got = torch.stack([metrics[t]["loss"] for t in (0, 1, 2)], dim=1)
    torch.testing.assert_close(got, curves, rtol=1e-10, atol=1e-12)
    # discriminative: the rows differ, so the query loss at theta_0 depends on the row
    with torch.no_grad():
        set_norm_step(model, 1)
        wrong = nn.functional.cross_entropy(model(batch.query_x[0]), batch.query_y[0])
    assert float(wrong) != pytest.approx(float(curves[0, 0]), rel=1e-3)

    for i, task in enumerate(batch):
        for t in (1, 2):
            predict = learner.adapt(task, steps=t)
            set_norm_step(model, 0)  # changed between adapt() and the prediction
            loss = nn.functional.cross_entropy(predict(task.query_x), task.query_y)
            assert float(loss) == pytest.approx(float(curves[i, t]), rel=1e-10)


# -- quadratics: second order minus first order ----------------------------------------------
def test_second_minus_first_order_is_hessian_term_on_quadratics():
    """On quadratics the MAML correction is exactly ``-alpha H grad L_query(theta')``.

    Derivation: one inner step ``theta' = theta - alpha grad L_s(theta)`` has Jacobian
    ``d theta'/d theta = I - alpha H_s`` (``H_s`` the support Hessian, constant for a
    quadratic), so the second-order meta-gradient is ``(I - alpha H_s) grad L_q(theta')`` and
    the first-order one is ``grad L_q(theta')``; their difference is
    ``-alpha H_s grad L_q(theta')``, averaged over the tasks.

    With the ``Quadratic`` family's encoding (bias-free ``Linear(1, 1)``, MSE) the inner loss
    of task ``i`` is ``h_i/2 (theta - theta*_i)^2`` (``H_s = h_i``) and the query loss
    ``1/2 (theta' - theta*_i)^2`` (gradient ``theta' - theta*_i``), so the difference is
    ``-(alpha/T) sum_i h_i (theta'_i - theta*_i)`` with
    ``theta'_i = theta - alpha h_i (theta - theta*_i)``, computed here from ``h`` and
    ``theta*`` alone.
    """
    family = Quadratic(curvature_range=(0.2, 3.0), optimum_std=2.0, dtype=torch.float64)
    batch = family.sample(16, torch.Generator().manual_seed(3))
    h = batch.info["curvature"].reshape(-1)
    opt = batch.info["optimum"].reshape(-1)
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.7)
    theta, alpha = 0.7, 0.3

    so, _ = MAML(model, inner_lr=alpha).meta_loss(batch)
    fo, _ = FOMAML(model, inner_lr=alpha).meta_loss(batch)
    (g_so,) = torch.autograd.grad(so, model.weight)
    (g_fo,) = torch.autograd.grad(fo, model.weight)

    adapted = theta - alpha * h * (theta - opt)
    expected_gap = -(alpha * h * (adapted - opt)).mean()
    assert float(g_so - g_fo) == pytest.approx(float(expected_gap), rel=1e-12, abs=1e-14)
    # and each one against its closed form
    assert float(g_fo) == pytest.approx(float((adapted - opt).mean()), rel=1e-12)
    assert float(g_so) == pytest.approx(
        float(((1 - alpha * h) * (adapted - opt)).mean()), rel=1e-12
    )
    expected_loss = float((0.5 * (adapted - opt) ** 2).mean())
    assert float(so.detach()) == pytest.approx(expected_loss, rel=1e-12)


def test_second_minus_first_order_is_hessian_term_on_linear_regression():
    """The same relation with a matrix Hessian: for ``f(x) = w . x`` and MSE on ``S`` support
    points, ``H_s = (2/S) X_s^T X_s``; the gap is ``-(alpha/T) sum_i H_i grad L_q_i(w'_i)``,
    with ``grad L_q_i`` taken by autograd at the adapted weights."""
    family = LinearRegression(dim=4, shots=6, queries=7, dtype=torch.float64)
    batch = family.sample(5, torch.Generator().manual_seed(4))
    torch.manual_seed(4)
    model = nn.Linear(4, 1, bias=False).double()
    alpha = 0.1
    so, _ = MAML(model, inner_lr=alpha).meta_loss(batch)
    fo, _ = FOMAML(model, inner_lr=alpha).meta_loss(batch)
    gap = torch.autograd.grad(so, model.weight)[0] - torch.autograd.grad(fo, model.weight)[0]

    w = model.weight.detach().reshape(-1)
    expected = torch.zeros(4, dtype=torch.float64)
    for task in batch:
        xs, ys = task.support_x, task.support_y.reshape(-1)
        hess = 2 / xs.shape[0] * xs.T @ xs
        w_adapted = w - alpha * (hess @ w - 2 / xs.shape[0] * xs.T @ ys)
        wq = w_adapted.clone().requires_grad_()
        query = ((task.query_x @ wq - task.query_y.reshape(-1)) ** 2).mean()
        (gq,) = torch.autograd.grad(query, wq)
        expected += -alpha * hess @ gq / len(batch)
    torch.testing.assert_close(gap.reshape(-1), expected, rtol=1e-10, atol=1e-13)


# -- convergence to closed forms ------------------------------------------------------------
def test_one_step_maml_on_quadratics_converges_to_closed_form():
    """One-step MAML on 1-D quadratics minimises
    ``E_i 1/2 ((1 - alpha h_i)(theta - theta*_i))^2`` (the query loss is the distance to the
    task optimum after one step, since ``theta' - theta*_i = (1 - alpha h_i)(theta - theta*_i)``),
    whose minimiser is the weighted mean
    ``theta_0 = sum_i p_i (1 - alpha h_i)^2 theta*_i / sum_i p_i (1 - alpha h_i)^2``.

    The task set is finite with probabilities ``1/2, 1/4, 1/4``; the meta-batch holds each
    task in proportion to its probability, so the batch mean is the exact expectation, and
    the real learner is trained with an outer optimizer until it stops moving.
    """
    h = [0.5, 2.0, 3.5]
    opt = [1.0, -2.0, 0.5]
    p = [0.5, 0.25, 0.25]
    alpha = 0.4
    family = Quadratic(curvatures=h, optima=opt, probs=p, dtype=torch.float64)
    batch = family.make_batch(
        torch.tensor([h[0], h[0], h[1], h[2]]), torch.tensor([opt[0], opt[0], opt[1], opt[2]])
    )
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(5.0)
    learner = MAML(model, inner_lr=alpha, inner_steps=1)
    # the objective's curvature is sum_i p_i (1 - alpha h_i)^2 = 0.37: lr 2 contracts by 0.26
    outer = torch.optim.SGD(learner.parameters(), lr=2.0)
    for _ in range(60):
        loss, _ = learner.meta_loss(batch)
        outer.zero_grad()
        loss.backward()
        outer.step()
    closed_form = oracles.maml_quadratic_optimum(h, opt, alpha, p)
    assert float(model.weight.detach()) == pytest.approx(closed_form, abs=1e-10)
    # the MAML solution is not the plain average of the optima (the test discriminates)
    assert abs(closed_form - sum(pi * o for pi, o in zip(p, opt))) > 0.1


def test_one_step_maml_on_linear_regression_converges_to_closed_form():
    """Closed-form minimiser of the one-step MAML objective for a linear model with MSE.

    For task ``i`` with support ``(X_s, y_s)`` (``S`` rows) and query ``(X_q, y_q)`` (``Q``
    rows), ``L_s(theta) = (1/S) ||X_s theta - y_s||^2`` has gradient ``A_s theta - b_s`` with
    ``A_s = (2/S) X_s^T X_s`` and ``b_s = (2/S) X_s^T y_s``, so the adapted weights
    ``theta' = (I - alpha A_s) theta + alpha b_s`` are affine in ``theta``.  The query loss
    ``(1/Q) ||X_q theta' - y_q||^2 = (1/Q) ||M_i theta - r_i||^2`` with
    ``M_i = X_q (I - alpha A_s)`` and ``r_i = y_q - alpha X_q b_s`` is therefore quadratic in
    ``theta``, and the MAML objective ``(1/T) sum_i (1/Q) ||M_i theta - r_i||^2`` over the
    fixed task set is minimised by the solution of the normal equations
    ``(sum_i M_i^T M_i) theta = sum_i M_i^T r_i`` (``diagnostics.oracles``, itself checked
    against the learner's meta-gradient in tests/diagnostics/test_oracles.py).
    The real learner, trained with L-BFGS on ``learner.meta_loss``, must land on it.
    """
    dim, alpha = 3, 0.15
    family = LinearRegression(
        dim=dim, shots=4, queries=6, w_mean=1.5, w_std=1.0, noise_std=0.1, dtype=torch.float64
    )
    batch = family.sample(8, torch.Generator().manual_seed(5))
    closed_form = oracles.maml_linear_regression_optimum(batch, alpha)

    torch.manual_seed(0)
    model = nn.Linear(dim, 1, bias=False).double()
    learner = MAML(model, inner_lr=alpha, inner_steps=1)
    outer = torch.optim.LBFGS(
        learner.parameters(),
        lr=1.0,
        max_iter=100,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure():
        outer.zero_grad()
        loss, _ = learner.meta_loss(batch)
        loss.backward()
        return loss

    for _ in range(3):
        outer.step(closure)
    torch.testing.assert_close(model.weight.detach().reshape(-1), closed_form, rtol=1e-8, atol=1e-9)
    # discriminative: ordinary least squares on the pooled data is somewhere else
    x = torch.cat([batch.support_x, batch.query_x], 1).reshape(-1, dim)
    y = torch.cat([batch.support_y, batch.query_y], 1).reshape(-1)
    pooled = torch.linalg.lstsq(x, y.unsqueeze(-1)).solution.reshape(-1)
    assert float((pooled - closed_form).norm()) > 1e-2


# -- a short sinusoid run ----------------------------------------------------------------------
@pytest.mark.slow
def test_maml_beats_joint_training_on_sinusoid():
    """400 meta-iterations (meta-batch 25, one inner step, Adam 3e-3 outer) of MAML against
    ``JointTraining`` trained the same way on all tasks' data; both fine-tuned with the same
    SGD steps (inner_lr 0.01) on 200 held-out tasks.  The paper's gap (Finn et al. 2017,
    fig. 2) shows already: after 1 and 10 steps MAML's MSE is about half the baseline's or
    less (measured, seeds 0-2: 1.28-1.44 vs 2.49-2.75 after one step, 0.64-0.78 vs
    1.95-2.17 after ten; this test runs seed 0)."""
    family = Sinusoid(shots=10, queries=10)
    held_out = family.sample(200, torch.Generator().manual_seed(123))

    def train(cls):
        torch.manual_seed(0)
        learner = cls(MLP(1, 1, hidden=(40, 40)), inner_lr=0.01, inner_steps=1)
        outer = torch.optim.Adam(learner.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(1)
        for _ in range(400):
            loss, _ = learner.meta_loss(family.sample(25, gen))
            outer.zero_grad()
            loss.backward()
            outer.step()
        result = learner.evaluate_batch(held_out, steps=(1, 10))
        return {s: float(m["loss"].mean()) for s, m in result.items()}

    maml, joint = train(MAML), train(JointTraining)
    for steps in (1, 10):
        assert math.isfinite(maml[steps])
        assert maml[steps] < 0.6 * joint[steps], (maml, joint)
    assert maml[10] < 1.0, maml


# -- arguments --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inner_steps": 0}, "inner_steps"),
        ({"inner_steps": 1.5}, "inner_steps"),
        ({"inner_lr": -0.1}, "inner_lr"),
        ({"inner_optimizer": "rmsprop"}, "inner optimizer"),
        ({"adapt": "nope"}, "no parameter matches"),
        ({"vectorize": "threads"}, "vectorize"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MAML(MLP(1, 1, hidden=(4,)), **kwargs)


def test_top_level_exports():
    assert ml.MAML is MAML and ml.FOMAML is FOMAML
    assert FOMAML(MLP(1, 1, hidden=(4,)), first_order=False).first_order


# -- transductive fine-tuning (query entropy in the inner loss, test time) ------------------


def transductive_reference(model, sx, sy, qx, weight, lr, steps):
    """Hand-written SGD on CE(support) + weight * mean query entropy, plain autograd;
    the query logits after 0 .. steps steps, from the joint support+query forward."""
    n, both = sx.shape[0], torch.cat([sx, qx])
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    logits = []
    for t in range(steps + 1):
        out = functional_call(model, params, (both,))
        logits.append(out[n:].detach())
        if t == steps:
            break
        log_q = torch.log_softmax(out[n:], -1)
        entropy = -(log_q.exp() * log_q).sum(-1).mean()
        loss = nn.functional.cross_entropy(out[:n], sy) + weight * entropy
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {
            k: (v - lr * g).detach().requires_grad_() for (k, v), g in zip(params.items(), grads)
        }
    return logits


def test_transductive_entropy_matches_a_hand_written_loop():
    from synthetic_episodes import gaussian_episodes

    torch.manual_seed(0)
    model = MLP(8, 3, hidden=(16,)).double()
    batch = gaussian_episodes(2, ways=3, shots=2, queries=4, dtype=torch.float64)
    learner = MAML(
        model, inner_lr=0.3, inner_steps=1, loss="cross_entropy", transductive_entropy=0.7
    )
    got = learner.evaluate_batch(batch, steps=(0, 1, 3))
    for t in range(2):
        sx, sy, qx, qy = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
        want = transductive_reference(model, sx, sy, qx, 0.7, 0.3, 3)
        for s in (0, 1, 3):
            loss = nn.functional.cross_entropy(want[s], qy)
            torch.testing.assert_close(got[s]["loss"][t], loss, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(learner.adapt((sx, sy), steps=3)(qx), want[3])
        # the entropy term matters: without it the adapted predictions differ
        plain = transductive_reference(model, sx, sy, qx, 0.0, 0.3, 3)
        assert (plain[3] - want[3]).abs().max() > 1e-3
    # off by default: the plain inner loop on the support set alone
    off = MAML(model, inner_lr=0.3, inner_steps=1, loss="cross_entropy")
    assert off.transductive_entropy == 0.0
    assert "transductive" not in repr(off) and "transductive_entropy=0.7" in repr(learner)


def test_mean_entropy_gradient_matches_finite_differences():
    from metaloop.algorithms.gradient import mean_entropy

    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mean_entropy, (logits,))
    uniform = torch.zeros(3, 4, dtype=torch.float64)
    torch.testing.assert_close(
        mean_entropy(uniform), torch.tensor(math.log(4), dtype=torch.float64)
    )
    assert float(mean_entropy(torch.zeros(0, 4))) == 0.0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "1"])
def test_transductive_entropy_bad_values_are_refused(bad):
    with pytest.raises(ValueError, match="transductive_entropy must be a finite number >= 0"):
        MAML(MLP(2, 3), inner_lr=0.1, loss="cross_entropy", transductive_entropy=bad)


def test_transductive_entropy_needs_classification():
    with pytest.raises(ValueError, match="needs a classification loss"):
        MAML(MLP(1, 1), inner_lr=0.1, loss="mse", transductive_entropy=1.0)
