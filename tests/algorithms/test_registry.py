"""The open algorithm registry and the task-family registry."""

from __future__ import annotations

import sys
import textwrap

import pytest
from torch import nn

from metaloop.algorithms import MAML, MetaLearner, ProtoNet
from metaloop.algorithms.base import constructor_accepts
from metaloop.algorithms.registry import RegistryError, available, name_of, register, resolve
from metaloop.tasks.base import TaskError
from metaloop.tasks.registry import TaskSpec, register_family

BUILTINS = {
    "maml", "fomaml", "adml", "reptile", "metasgd", "learned_optimizer", "joint", "anil",
    "protomaml", "cavia", "imaml", "protonet", "matching", "relation", "siamese",
    "finetune", "cnp",
}  # fmt: skip


def test_every_builtin_is_registered_by_importing_the_package() -> None:
    assert BUILTINS <= set(available())
    assert resolve("maml") is MAML
    assert name_of(ProtoNet) == "protonet"


def test_import_path_resolves_to_a_learner_class() -> None:
    assert resolve("metaloop.algorithms.protonet:ProtoNet") is ProtoNet


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("no_such_learner", "unknown algorithm 'no_such_learner'"),
        ("not a path:X", "not of the form"),
        ("metaloop_no_such_module.x:Y", "is not importable"),
        ("metaloop.algorithms.maml:Nothing", "has no 'Nothing'"),
        ("torch.nn:Linear", "not a MetaLearner subclass"),
        ("metaloop.algorithms.base:as_support", "not a MetaLearner subclass"),
        ("", "registered name or"),
    ],
)
def test_bad_names_are_one_line_errors(given: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message) as err:
        resolve(given)
    assert "\n" not in str(err.value)


def test_out_of_tree_module_is_imported_only_from_the_environment(tmp_path, monkeypatch) -> None:
    (tmp_path / "h2_outoftree.py").write_text(
        textwrap.dedent(
            """
            from metaloop.algorithms.base import MetaLearner

            class Mine(MetaLearner):
                model_role = "embedding"
            """
        )
    )
    with pytest.raises(RegistryError, match="not importable"):
        resolve("h2_outoftree:Mine")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = resolve("h2_outoftree:Mine")
    assert issubclass(cls, MetaLearner) and cls.model_role == "embedding"
    assert name_of(cls) == "h2_outoftree:Mine"
    sys.modules.pop("h2_outoftree", None)


def test_register_refuses_bad_names_taken_names_and_non_learners() -> None:
    with pytest.raises(RegistryError, match="lower-case"):
        register("Bad-Name")
    with pytest.raises(RegistryError, match="already registered"):
        register("maml")(type("Other", (MetaLearner,), {}))
    with pytest.raises(RegistryError, match="not a MetaLearner"):
        register("h2_not_a_learner")(nn.Linear)


def test_learners_declare_their_model_role_and_defaults() -> None:
    spec = TaskSpec(input_shape=(1, 28, 28), y_dim=5, classification=True, ways=5, num_classes=9)
    for name in ("protonet", "matching", "relation", "siamese", "finetune", "cnp"):
        assert resolve(name).model_role == "embedding", name
    for name in ("maml", "fomaml", "protomaml", "anil", "reptile", "imaml", "joint"):
        assert resolve(name).model_role == "classifier", name
    model = nn.Linear(1, 1)
    assert resolve("maml").config_defaults(spec, model, {}) == {"loss": "cross_entropy"}
    assert resolve("protonet").config_defaults(spec, model, {}) == {}
    assert resolve("protonet").config_defaults(spec, model, {"global_loss_weight": 0.5}) == {
        "global_classes": 9
    }
    assert resolve("finetune").config_defaults(spec, model, {}) == {"num_classes": 9}
    assert resolve("cnp").config_defaults(spec, model, {}) == {
        "loss": "cross_entropy",
        "x_dim": 784,
        "y_dim": 5,
    }
    assert constructor_accepts(MAML, "inner_lr") and not constructor_accepts(ProtoNet, "loss")


def test_task_spec_checks_its_fields() -> None:
    spec = TaskSpec(input_shape=[3, 4], y_dim=2)
    assert spec.input_shape == (3, 4) and spec.x_dim == 12 and spec.loss == "mse"
    with pytest.raises(TaskError, match="input_shape"):
        TaskSpec(input_shape=(0,), y_dim=1)
    with pytest.raises(TaskError, match="ways"):
        TaskSpec(input_shape=(1,), y_dim=1, ways=True)


def test_register_family_refuses_conflicting_data_defaults(monkeypatch) -> None:
    from metaloop.tasks import registry

    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    register_family("h2_family_a", data_keys={"h2_key": 1})(lambda: None)
    with pytest.raises(TaskError, match="h2_key"):
        register_family("h2_family_b", data_keys={"h2_key": 2})(lambda: None)


def test_entry_points_of_installed_packages_are_names(monkeypatch) -> None:
    import importlib.metadata
    from pathlib import Path

    from metaloop.algorithms import registry

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "fixtures"))
    entry = importlib.metadata.EntryPoint(
        "h2_plugged", "contract_plugin.outoftree:ShiftedMean", registry.ENTRY_POINT_GROUP
    )
    broken = importlib.metadata.EntryPoint(
        "h2_broken", "contract_plugin.no_such_module:X", registry.ENTRY_POINT_GROUP
    )
    found = {"h2_plugged": entry, "h2_broken": broken}
    monkeypatch.setattr(registry, "_entry_points", lambda: found)
    assert {"h2_plugged", "h2_broken"} <= set(available())
    assert resolve("h2_plugged").__name__ == "ShiftedMean"
    with pytest.raises(RegistryError, match=r"'h2_broken' .*failed to import"):
        resolve("h2_broken")
