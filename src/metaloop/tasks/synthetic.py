"""Synthetic task families from the meta-learning literature.

Every family samples a ``TaskBatch`` from a seeded ``torch.Generator``: the same
generator state gives the same batch, whatever else the process does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from metaloop.tasks.base import TaskBatch, TaskError, check_positive
from metaloop.tasks.registry import TaskSpec, register_family

#: the model of families whose reference learner is linear in its parameters
LINEAR_MLP = {"hidden": (), "bias": False}


def _uniform(shape, low: float, high: float, generator, dtype) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=dtype)


@register_family("sinusoid")
class Sinusoid:
    """Sine-wave regression of Finn et al. (2017), section 5.1.

    Task: ``y = A sin(x - phi)`` with ``A ~ U[amplitude]``, ``phi ~ U[phase]`` and inputs
    ``x ~ U[x_range]``.  Each task has ``shots`` support points and ``queries`` query points,
    inputs of shape ``[n, 1]`` and targets of shape ``[n, 1]``; the loss is MSE.
    """

    loss = "mse"

    @property
    def spec(self) -> TaskSpec:
        """One scalar input, one scalar target."""
        return TaskSpec(input_shape=(1,), y_dim=1)

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.shots = check_positive("shots", shots)
        self.queries = check_positive("queries", queries)
        for name, (low, high) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not low <= high:
                raise TaskError(f"{name} must be an interval (low <= high), got ({low}, {high})")
        self.amplitude, self.phase, self.x_range, self.dtype = amplitude, phase, x_range, dtype

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        check_positive("batch_size", batch_size)
        g, dt = generator, self.dtype
        amp = _uniform((batch_size, 1, 1), *self.amplitude, g, dt)
        phase = _uniform((batch_size, 1, 1), *self.phase, g, dt)
        x = _uniform((batch_size, self.shots + self.queries, 1), *self.x_range, g, dt)
        y = amp * torch.sin(x - phase)
        s = self.shots
        return TaskBatch(
            x[:, :s], y[:, :s], x[:, s:], y[:, s:], info={"amplitude": amp, "phase": phase}
        )


@register_family("linear")
class LinearRegression:
    """Linear regression tasks ``y = w . x + noise``.

    ``w = w_mean + B z`` with ``z ~ N(0, w_std^2 I_r)``: with ``subspace_dim = r < dim`` the
    task weights lie on a fixed random ``r``-dimensional subspace spanned by the orthonormal
    columns of ``B`` (drawn once from ``basis_seed``); otherwise ``B = I``.  Inputs are
    ``x ~ N(0, I_dim)`` and ``noise ~ N(0, noise_std^2)``.
    """

    loss = "mse"

    @property
    def spec(self) -> TaskSpec:
        """``dim`` inputs, one target."""
        return TaskSpec(input_shape=(self.dim,), y_dim=1)

    def __init__(
        self,
        dim: int = 5,
        shots: int = 10,
        queries: int = 10,
        w_mean: float | Tensor = 0.0,
        w_std: float = 1.0,
        noise_std: float = 0.0,
        subspace_dim: int | None = None,
        basis_seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.dim = check_positive("dim", dim)
        self.shots = check_positive("shots", shots)
        self.queries = check_positive("queries", queries)
        if w_std < 0 or noise_std < 0:
            raise TaskError(f"w_std and noise_std must be >= 0, got {w_std}, {noise_std}")
        w_mean = torch.as_tensor(w_mean, dtype=dtype)
        if w_mean.dim() > 1 or w_mean.numel() not in (1, dim):
            raise TaskError(
                f"w_mean must be a number or a vector of length dim={dim}, "
                f"got shape {tuple(w_mean.shape)}"
            )
        self.w_mean = w_mean.expand(dim).clone()
        self.w_std, self.noise_std, self.dtype = w_std, noise_std, dtype
        if subspace_dim is None:
            self.basis = torch.eye(dim, dtype=dtype)
        else:
            check_positive("subspace_dim", subspace_dim)
            if subspace_dim > dim:
                raise TaskError(f"subspace_dim must be <= dim={dim}, got {subspace_dim}")
            g = torch.Generator().manual_seed(basis_seed)
            q, _ = torch.linalg.qr(torch.randn(dim, subspace_dim, generator=g, dtype=torch.float64))
            self.basis = q.to(dtype)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        check_positive("batch_size", batch_size)
        g, dt = generator, self.dtype
        z = self.w_std * torch.randn(batch_size, self.basis.shape[1], generator=g, dtype=dt)
        w = self.w_mean + z @ self.basis.T  # [T, dim]
        n = self.shots + self.queries
        x = torch.randn(batch_size, n, self.dim, generator=g, dtype=dt)
        y = torch.einsum("tnd,td->tn", x, w).unsqueeze(-1)
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(y.shape, generator=g, dtype=dt)
        s = self.shots
        return TaskBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:], info={"weights": w})


@register_family("quadratic")
class Quadratic:
    """One-dimensional quadratic tasks, written as one-point linear regression.

    Task ``i`` has curvature ``h_i`` and optimum ``theta*_i``.  With a bias-free linear
    model ``f(x) = theta x`` and the MSE loss, the support point ``x = sqrt(h_i / 2)``,
    ``y = x theta*_i`` gives the inner loss ``L_i(theta) = h_i / 2 (theta - theta*_i)^2``
    and the query point ``x = sqrt(1/2)``, ``y = x theta*_i`` gives the distance-to-optimum
    objective ``1/2 (theta' - theta*_i)^2``.

    Tasks are drawn either from a finite set (``curvatures``, ``optima``, ``probs``) or, when
    those are not given, with ``h ~ U[curvature_range]`` and ``theta* ~ N(0, optimum_std^2)``.
    """

    loss = "mse"

    @property
    def spec(self) -> TaskSpec:
        """The reference model is linear in its parameters (no hidden layer, no bias)."""
        return TaskSpec(input_shape=(1,), y_dim=1, model_hints={"mlp": LINEAR_MLP})

    shots = 1
    queries = 1

    def __init__(
        self,
        curvatures: Sequence[float] | None = None,
        optima: Sequence[float] | None = None,
        probs: Sequence[float] | None = None,
        curvature_range: tuple[float, float] = (0.5, 2.0),
        optimum_std: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.dtype = dtype
        if optimum_std < 0:
            raise TaskError(f"optimum_std must be >= 0, got {optimum_std}")
        self.curvature_range, self.optimum_std = curvature_range, optimum_std
        if curvatures is not None or optima is not None:
            if curvatures is None or optima is None or len(curvatures) != len(optima):
                raise TaskError("curvatures and optima must be given together, of equal length")
            if any(h <= 0 for h in curvatures):
                raise TaskError(f"curvatures must be > 0, got {list(curvatures)}")
            n = len(curvatures)
            p = (
                torch.full((n,), 1.0 / n)
                if probs is None
                else torch.as_tensor(probs, dtype=torch.float64)
            )
            if p.shape != (n,) or (p < 0).any() or abs(float(p.sum()) - 1) > 1e-6:
                raise TaskError(f"probs must be {n} non-negative numbers summing to 1, got {probs}")
            self.curvatures = torch.as_tensor(curvatures, dtype=dtype)
            self.optima = torch.as_tensor(optima, dtype=dtype)
            self.probs = p.to(dtype)
        else:
            low, high = curvature_range
            if not 0 < low <= high:
                raise TaskError(
                    f"curvature_range must satisfy 0 < low <= high, got {curvature_range}"
                )
            self.curvatures = self.optima = self.probs = None

    def make_batch(self, curvatures: Tensor, optima: Tensor) -> TaskBatch:
        """The task batch for given per-task curvatures ``h`` and optima ``theta*``."""
        h = torch.as_tensor(curvatures, dtype=self.dtype).reshape(-1, 1, 1)
        opt = torch.as_tensor(optima, dtype=self.dtype).reshape(-1, 1, 1)
        xs = torch.sqrt(h / 2)
        xq = torch.full_like(xs, math.sqrt(0.5))
        return TaskBatch(xs, xs * opt, xq, xq * opt, info={"curvature": h, "optimum": opt})

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        check_positive("batch_size", batch_size)
        if self.curvatures is not None:
            idx = torch.multinomial(self.probs, batch_size, replacement=True, generator=generator)
            return self.make_batch(self.curvatures[idx], self.optima[idx])
        h = _uniform((batch_size,), *self.curvature_range, generator, self.dtype)
        opt = self.optimum_std * torch.randn(batch_size, generator=generator, dtype=self.dtype)
        return self.make_batch(h, opt)


@register_family("gaussian_mean")
class GaussianMean:
    """Estimate the mean of a Gaussian from a few samples.

    ``mu ~ N(prior_mean, prior_std^2 I)``, observations ``z ~ N(mu, noise_std^2 I)``.  Inputs
    are a constant ``1`` (shape ``[n, 1]``) and targets the observations ``[n, dim]``, so a
    bias-free ``nn.Linear(1, dim)`` holds the estimate; with the MSE loss, one gradient step
    from ``theta`` is a shrinkage estimator and MAML learns the prior mean (the MAP view of
    Grant et al. 2018).
    """

    loss = "mse"

    @property
    def spec(self) -> TaskSpec:
        """A constant input, the ``dim``-dimensional mean as target; linear model."""
        return TaskSpec(input_shape=(1,), y_dim=self.dim, model_hints={"mlp": LINEAR_MLP})

    def __init__(
        self,
        dim: int = 1,
        shots: int = 5,
        queries: int = 20,
        prior_mean: float = 0.0,
        prior_std: float = 1.0,
        noise_std: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.dim = check_positive("dim", dim)
        self.shots = check_positive("shots", shots)
        self.queries = check_positive("queries", queries)
        if prior_std < 0 or noise_std < 0:
            raise TaskError(f"prior_std and noise_std must be >= 0, got {prior_std}, {noise_std}")
        self.prior_mean, self.prior_std, self.noise_std, self.dtype = (
            prior_mean,
            prior_std,
            noise_std,
            dtype,
        )

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        check_positive("batch_size", batch_size)
        g, dt = generator, self.dtype
        mu = self.prior_mean + self.prior_std * torch.randn(
            batch_size, 1, self.dim, generator=g, dtype=dt
        )
        n = self.shots + self.queries
        z = mu + self.noise_std * torch.randn(batch_size, n, self.dim, generator=g, dtype=dt)
        x = torch.ones(batch_size, n, 1, dtype=dt)
        s = self.shots
        return TaskBatch(x[:, :s], z[:, :s], x[:, s:], z[:, s:], info={"mean": mu})


@register_family("rotating_boundary")
class RotatingBoundary:
    """Binary classification in 2-D by a line through the origin at a random angle.

    Label ``1`` when ``x . n(angle) > 0`` with normal ``n = (cos angle, sin angle)``.  A
    boundary at angle ``a`` (degrees, measured from the x axis) has normal at ``a + 90``.
    Angles are drawn from ``N(angle_mean, angle_std^2)`` degrees; ``angle_std = 0`` gives a
    single fixed task.  Inputs ``x ~ U[-1, 1]^2``; ``shots``/``queries`` count points per
    class-balanced task in total (labels ``0``/``1``, ``ways = 2``).
    """

    loss = "cross_entropy"

    @property
    def spec(self) -> TaskSpec:
        """2-D points, two classes."""
        return TaskSpec(input_shape=(2,), y_dim=2, classification=True, ways=2)

    def __init__(
        self,
        shots: int = 10,
        queries: int = 50,
        angle_mean: float = 90.0,
        angle_std: float = 10.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.shots = check_positive("shots", shots)
        self.queries = check_positive("queries", queries)
        if angle_std < 0:
            raise TaskError(f"angle_std must be >= 0, got {angle_std}")
        self.angle_mean, self.angle_std, self.dtype = angle_mean, angle_std, dtype
        self.ways = 2

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        check_positive("batch_size", batch_size)
        g, dt = generator, self.dtype
        angle = self.angle_mean + self.angle_std * torch.randn(batch_size, generator=g, dtype=dt)
        normal_angle = torch.deg2rad(angle + 90.0)
        normal = torch.stack([torch.cos(normal_angle), torch.sin(normal_angle)], dim=-1)
        n = self.shots + self.queries
        x = _uniform((batch_size, n, 2), -1.0, 1.0, g, dt)
        y = (torch.einsum("tnd,td->tn", x, normal) > 0).long()
        s = self.shots
        return TaskBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:], ways=2, info={"angle": angle})


@register_family("bandit")
class BernoulliBandit:
    """Multi-armed Bernoulli bandits, the simplest meta-RL family.

    Each task draws arm success probabilities; one arm is good (``p = good_prob``) and the
    others bad (``p = bad_prob``), the good arm uniform at random.  A task is logged
    experience: ``shots`` uniformly random pulls for the support set and ``queries`` for
    the query set, inputs the one-hot arm ``[n, arms]``, targets the 0/1 reward ``[n, 1]``.
    A model that regresses reward on the arm (MSE) and then acts greedily is a one-step
    contextual learner; ``regret`` scores a learner's chosen arms against the best arm.
    """

    loss = "mse"

    @property
    def spec(self) -> TaskSpec:
        """The one-hot arm in, the reward out."""
        return TaskSpec(input_shape=(self.arms,), y_dim=1)

    def __init__(
        self,
        arms: int = 5,
        shots: int = 10,
        queries: int = 10,
        good_prob: float = 0.9,
        bad_prob: float = 0.1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.arms = check_positive("arms", arms)
        if self.arms < 2:
            raise TaskError(f"a bandit needs arms >= 2, got {arms}")
        self.shots = check_positive("shots", shots)
        self.queries = check_positive("queries", queries)
        for name, p in (("good_prob", good_prob), ("bad_prob", bad_prob)):
            if not 0.0 <= p <= 1.0:
                raise TaskError(f"{name} must lie in [0, 1], got {p}")
        self.good_prob, self.bad_prob, self.dtype = good_prob, bad_prob, dtype

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        check_positive("batch_size", batch_size)
        g, dt = generator, self.dtype
        good = torch.randint(self.arms, (batch_size,), generator=g)
        probs = torch.full((batch_size, self.arms), self.bad_prob, dtype=dt)
        probs[torch.arange(batch_size), good] = self.good_prob
        n = self.shots + self.queries
        pulls = torch.randint(self.arms, (batch_size, n), generator=g)
        x = torch.nn.functional.one_hot(pulls, self.arms).to(dt)
        p = torch.gather(probs, 1, pulls)
        r = (torch.rand(p.shape, generator=g, dtype=dt) < p).to(dt).unsqueeze(-1)
        s = self.shots
        return TaskBatch(
            x[:, :s], r[:, :s], x[:, s:], r[:, s:], info={"probs": probs, "good_arm": good}
        )

    @staticmethod
    def regret(chosen_arms: Tensor, probs: Tensor) -> Tensor:
        """Per-task regret ``max_a p_a - p_chosen``."""
        return probs.max(dim=-1).values - torch.gather(
            probs, -1, chosen_arms.unsqueeze(-1)
        ).squeeze(-1)
