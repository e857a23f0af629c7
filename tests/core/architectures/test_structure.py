"""Structural facts of each architecture: the limits that reduce to simpler models, parameter
counts, and the pitfalls the issue names (identical experts, PLE without its shared gate,
1 x T cross-stitch units, gates on the raw input)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from core.architectures import ARCHITECTURES, branched_from_groups
from core.architectures.experts import ExpertBank
from core.backbones import MLPBackbone
from core.errors import ConfigError
from core.model import JointModel
from core.tasks import build_task

from .toy import TASKS, toy_model

X = torch.randn(7, 20, generator=torch.Generator().manual_seed(1))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _single_task_models() -> dict[str, JointModel]:
    out = {}
    for t, k in TASKS.items():
        backbone = MLPBackbone(20, hidden=(24, 24, 16), dropout=0.0)
        out[t] = JointModel(backbone, [build_task(t, {"type": "classification", "num_classes": k}, backbone)])
    return out


def _copy(src: list[nn.Parameter], dst: list[nn.Parameter]) -> None:
    assert [p.shape for p in src] == [p.shape for p in dst]
    with torch.no_grad():
        for s, d in zip(src, dst, strict=True):
            d.copy_(s)


def _outputs(model: JointModel) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(X)


@pytest.mark.parametrize("spec", [{"name": "branched", "branch_point": 0}, {"name": "cross_stitch", "init_self": 1.0}])
def test_no_sharing_limit_equals_independent_models(spec):
    """branched at depth 0 and cross-stitch with identity units are one independent network per task."""
    model = toy_model(spec)
    singles = _single_task_models()
    columns = model.architecture.nodes if spec["name"] == "branched" else model.architecture.columns
    for t, single in singles.items():
        _copy(list(columns[t].parameters()), list(single.backbone.parameters()))
        _copy(list(model.heads[t].parameters()), list(single.heads[t].parameters()))
    joint = _outputs(model)
    for t, single in singles.items():
        torch.testing.assert_close(joint[t], _outputs(single)[t], rtol=0, atol=1e-6)
    if spec["name"] == "branched":
        assert not list(model.shared_parameters())


def test_branched_at_full_depth_is_hard_sharing_bit_for_bit():
    hard, full = toy_model(None), toy_model({"name": "branched", "branch_point": 3})
    assert list(hard.state_dict()) == list(full.state_dict())
    a, b = _outputs(hard), _outputs(full)
    assert all(torch.equal(a[t], b[t]) for t in TASKS)


def test_hard_is_the_default_and_old_saved_models_load_as_hard(tmp_path):
    model = toy_model(None)
    assert model.config()["architecture"] == {"name": "hard"}
    assert all(k.startswith(("backbone.", "heads.")) for k in model.state_dict())
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["architecture"]  # a model saved before architectures existed
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = JointModel.from_pretrained(tmp_path / "m")
    assert loaded.architecture.spec() == {"name": "hard"}
    assert all(torch.equal(_outputs(model)[t], _outputs(loaded)[t]) for t in TASKS)


def test_mmoe_with_one_expert_is_hard_sharing_on_backbone_plus_expert():
    model = toy_model({"name": "mmoe", "n_experts": 1, "expert_hidden": 8})
    bank = model.architecture.experts

    class BackbonePlusExpert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp, self.expert, self.out_dim = MLPBackbone(20, (24, 24, 16), 0.0), ExpertBank(1, 16, 8, 16), 16

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.expert(self.mlp(x))[:, 0]

    backbone = BackbonePlusExpert()
    hard = JointModel(
        backbone, [build_task(t, {"type": "classification", "num_classes": k}, backbone) for t, k in TASKS.items()]
    )
    _copy([*model.backbone.parameters(), *bank.parameters(), *model.heads.parameters()], list(hard.parameters()))
    a, b = _outputs(model), _outputs(hard)
    for t in TASKS:
        torch.testing.assert_close(a[t], b[t], rtol=0, atol=1e-6)
    # a softmax over one expert is constant: the gates get no gradient
    model.train()
    sum(o.sum() for o in model(X).values()).backward()
    assert model.architecture.gates.weight.grad.abs().max() == 0


def test_parameter_counts():
    hard = toy_model(None)
    blocks = [_count(hard.backbone.block(i)) for i in range(3)]
    heads, n_tasks = _count(hard.heads), len(TASKS)
    assert _count(hard) == sum(blocks) + heads
    assert _count(toy_model({"name": "branched", "branch_point": 1})) == _count(hard) + (n_tasks - 1) * sum(blocks[1:])
    tree = toy_model({"name": "branched", "branch_point": 1, "groups": [{"tasks": ["a", "b"], "until": 2}]})
    # trunk: block 0; group {a, b}: block 1; leaves a, b: block 2; leaf c: blocks 1-2
    assert _count(tree) == blocks[0] + blocks[1] + 2 * blocks[2] + (blocks[1] + blocks[2]) + heads
    stitch = toy_model({"name": "cross_stitch"})
    assert _count(stitch) == n_tasks * sum(blocks) + 3 * n_tasks * n_tasks + heads
    d, h, n = 16, 8, 3
    mmoe = toy_model({"name": "mmoe", "n_experts": n, "expert_hidden": h})
    assert _count(mmoe) == _count(hard) + n * (d * h + h + h * d + d) + n_tasks * (d * n + n)


def test_branched_tree_runs_a_group_node_once_and_per_task_points_build_the_same_tree():
    groups = toy_model({"name": "branched", "branch_point": 1, "groups": [{"tasks": ["a", "b"], "until": 2}]})
    per_task = toy_model({"name": "branched", "branch_point": {"a": 2, "b": 2, "c": 1}})
    assert _count(groups) == _count(per_task)
    assert groups.architecture.path == {"a": ["group:0", "a"], "b": ["group:0", "b"], "c": ["c"]}
    assert per_task.architecture.path == groups.architecture.path
    assert not groups.architecture.shared_representation  # the group node is shared past the trunk
    assert toy_model({"name": "branched", "branch_point": 2}).architecture.shared_representation


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"branch_point": 4}, "branch_point must be in [0, 3]"),
        ({"groups": [{"tasks": ["a", "z"], "until": 2}]}, "unknown task 'z'"),
        ({"groups": [{"tasks": ["a", "b"], "until": 2}, {"tasks": ["b", "c"], "until": 2}]}, "overlap without nesting"),
        ({"groups": [{"tasks": ["a", "b"], "until": 2}, {"tasks": ["b", "a"], "until": 3}]}, "same tasks"),
        ({"groups": [{"tasks": ["a", "b"], "until": 3}, {"tasks": ["a", "b", "c"], "until": 3}]}, None),
        ({"groups": [{"tasks": ["a", "b", "c"], "until": 3}, {"tasks": ["a", "b"], "until": 2}]}, "ends before"),
        ({"branch_point": {"a": 1}}, "must name every task"),
        ({"groups": [{"tasks": ["a"], "until": 2}]}, "two tasks or more"),
    ],
)
def test_branched_validates_its_tree(spec, message):
    if message is None:
        toy_model({"name": "branched", **spec})
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        toy_model({"name": "branched", **spec})


def test_block_architectures_refuse_a_backbone_without_blocks():
    class Plain(nn.Module):
        out_dim = 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    for name in ("branched", "cross_stitch", "mtan"):
        with pytest.raises(ConfigError, match="BlockBackbone"):
            ARCHITECTURES.build({"name": name}, backbone=Plain(), tasks=["a", "b"])


def test_registry_lists_valid_names_and_refuses_overwrite():
    with pytest.raises(ConfigError, match=r"Did you mean 'mmoe'.*Valid names: branched, cgc"):
        ARCHITECTURES.get("mmeo")
    with pytest.raises(ValueError, match="already registered"):
        ARCHITECTURES.register("hard")(type("Other", (), {}))


def test_branched_from_groups_builds_a_tree():
    spec = branched_from_groups([["a", "b"], ["c"]], branch_point=1, group_until=2)
    assert spec == {"name": "branched", "branch_point": 1, "groups": [{"tasks": ["a", "b"], "until": 2}]}
    assert toy_model(spec).architecture.path["a"] == ["group:0", "a"]
    with pytest.raises(ConfigError, match="in two groups"):
        branched_from_groups([["a", "b"], ["b"]], 1, 2)


def test_cross_stitch_units_are_task_by_task_per_block_and_mix_every_pair():
    model = toy_model({"name": "cross_stitch", "init_self": 0.8})
    units = model.architecture.units
    assert units.shape == (3, 3, 3)
    torch.testing.assert_close(units.sum(-1), torch.ones(3, 3))
    assert torch.allclose(units.diagonal(dim1=1, dim2=2), torch.full((3, 3), 0.8))
    base = _outputs(model)
    for source in TASKS:  # perturbing one column moves every task's output
        perturbed = toy_model({"name": "cross_stitch", "init_self": 0.8})
        with torch.no_grad():
            for p in perturbed.architecture.columns[source].parameters():
                p.add_(0.5)
        moved = _outputs(perturbed)
        assert all(not torch.allclose(moved[t], base[t]) for t in TASKS), source


def test_ple_has_shared_gates_below_the_last_level_and_cgc_isolates_task_experts():
    ple = toy_model({"name": "ple", "num_levels": 3, "n_shared": 2, "n_task": 1, "expert_hidden": 8})
    levels = ple.architecture.levels
    assert [lv.shared_gate is None for lv in levels] == [False, False, True]
    assert levels[0].shared_gate.out_features == len(TASKS) * 1 + 2  # every task's experts + the shared ones
    cgc = toy_model({"name": "cgc", "n_shared": 2, "n_task": 1, "expert_hidden": 8})
    for model, crosses in ((ple, True), (cgc, False)):
        base = _outputs(model)
        with torch.no_grad():
            for p in model.architecture.levels[0].task_experts["b"].parameters():
                p.add_(0.5)
        moved = _outputs(model)
        assert (not torch.allclose(moved["a"], base["a"])) is crosses  # b's experts reach a only via shared gates


@pytest.mark.parametrize("name", ["mmoe", "dselect_k", "cgc", "ple"])
def test_gates_read_the_encoder_features_not_the_raw_input(name):
    model = toy_model({"name": name})
    gate_inputs = {m.in_features for m in model.architecture.modules() if isinstance(m, nn.Linear)}
    stacked = [p.shape[1] for n, p in model.architecture.named_parameters() if n.endswith("weight") and p.ndim == 3]
    assert gate_inputs | set(stacked) <= {16}, (
        "gates and experts must read the backbone's 16-d features, not the 20-d input"
    )


@pytest.mark.parametrize("name", ["mmoe", "dselect_k", "cgc", "ple"])
def test_experts_differ_at_init_and_after_training(name):
    model = toy_model({"name": name, "expert_hidden": 8})
    banks = [m for m in model.architecture.modules() if isinstance(m, ExpertBank) and m.n > 1]
    assert banks

    def distinct() -> bool:
        return all(
            not torch.allclose(b.fc1.weight[i], b.fc1.weight[j]) for b in banks for i in range(b.n) for j in range(i)
        )

    assert distinct()
    start = [b.fc1.weight.detach().clone() for b in banks]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    y = {t: torch.randint(0, k, (7,)) for t, k in TASKS.items()}
    for _ in range(5):
        opt.zero_grad()
        out = model.train()(X)
        sum(nn.functional.cross_entropy(out[t], y[t]) for t in TASKS).backward()
        opt.step()
    assert distinct()
    assert all(not torch.equal(b.fc1.weight, s) for b, s in zip(banks, start, strict=True)), "experts did not train"


@pytest.mark.parametrize("name", ["mmoe", "dselect_k", "cgc", "ple"])
def test_gate_diagnostics(name):
    model = toy_model({"name": name})
    model(X)
    stats = model.architecture.diagnostics()
    for t in TASKS:
        loads = [v for k, v in stats.items() if k.startswith(f"gate/{t}/expert")]
        assert math.isclose(sum(loads), 1.0, rel_tol=1e-5)
        assert 0.0 <= stats[f"gate/{t}/entropy"] <= math.log(len(loads)) + 1e-6


def test_dselect_k_gate_is_a_distribution_that_reaches_exact_selection():
    from core.architectures.dselect_k import smooth_step

    t = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    torch.testing.assert_close(smooth_step(t, 1.0), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    arch = toy_model({"name": "dselect_k", "n_experts": 4, "k": 1}).architecture
    weights = arch.gate(torch.tensor([[5.0, -5.0]]), torch.zeros(1, 1))  # saturated bits: code 0b01 = expert 1
    torch.testing.assert_close(weights, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    odd = toy_model({"name": "dselect_k", "n_experts": 3, "k": 2}).architecture
    w = odd.gate(torch.randn(5, 2 * odd.bits), torch.randn(5, 2))
    torch.testing.assert_close(w.sum(-1), torch.ones(5))


def test_a_group_left_with_one_task_belongs_to_it():
    tree = toy_model({"name": "branched", "branch_point": 1, "groups": [{"tasks": ["a", "b"], "until": 2}]})
    part = tree.subset(["a", "c"])
    group = {id(p) for p in part.architecture.nodes["group:0"].parameters()}
    assert group <= {id(p) for p in part.task_parameters("a")}
    assert not group & {id(p) for p in part.shared_parameters()}
    assert part.architecture.shared_representation
