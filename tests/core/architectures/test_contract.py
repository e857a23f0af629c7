"""Every registered architecture through the same contract: parameter partition, exact gradient
spaces, persistence (full and subset), training through the real Trainer in both data regimes."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from core.architectures import ARCHITECTURES
from core.balancing.gradient import GradientBalancer
from core.balancing.method import Weighting
from core.model import JointModel

from .toy import TASKS, spec_of, toy_model, toy_trainer

NAMES = ARCHITECTURES.names()


def _reach(model: JointModel, x: torch.Tensor) -> dict[str, set[int]]:
    """Task -> ids of the parameters its output depends on (nonzero gradient of a random projection)."""
    model.train()
    reach = {}
    outputs = model(x)
    for t, out in outputs.items():
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), params, retain_graph=True, allow_unused=True)
        reach[t] = {id(p) for p, g in zip(params, grads, strict=True) if g is not None and g.abs().sum() > 0}
    return reach


@pytest.mark.parametrize("name", NAMES)
def test_shared_and_task_parameters_partition_the_model_by_reach(name):
    model = toy_model(spec_of(name))
    every = {id(p) for p in model.parameters() if p.requires_grad}
    shared = {id(p) for p in model.shared_parameters()}
    own = {t: {id(p) for p in model.task_parameters(t)} for t in TASKS}
    assert shared | set().union(*own.values()) == every
    assert sum(len(s) for s in own.values()) + len(shared) == len(every), "a parameter is in two parts"
    reach = _reach(model, torch.randn(8, 20))
    for p in model.parameters():
        tasks_reached = {t for t in TASKS if id(p) in reach[t]}
        if id(p) in shared:
            assert len(tasks_reached) >= 2, f"{name}: a shared parameter reaches only {tasks_reached}"
        else:
            (task,) = [t for t in TASKS if id(p) in own[t]]
            assert tasks_reached <= {task}, f"{name}: a parameter of '{task}' reaches {tasks_reached}"


class _Equal(Weighting):
    """Unit weights in gradient space: the update must equal the plain sum of the task gradients."""

    def _weights(self, gramian, losses, rows):
        return torch.ones(gramian.shape[0], dtype=gramian.dtype)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_spaces_are_exact(name):
    """``params`` always, ``rep`` where the architecture claims a shared representation: with unit
    weights the engine reproduces the plain backward of the summed losses, parameter by parameter."""
    from core.balancing import StepContext
    from core.distributed import DistEnv

    spaces = ["params"] + (["rep"] if toy_model(spec_of(name)).architecture.shared_representation else [])
    x, y = torch.randn(16, 20), {t: torch.randint(0, k, (16,)) for t, k in TASKS.items()}
    for space in spaces:
        model = toy_model(spec_of(name))

        def losses(m=model):
            features = m.encode(x)
            out = m.decode(features, list(TASKS))
            return {t: torch.nn.functional.cross_entropy(out[t], y[t]) for t in TASKS}, features

        ref, _ = losses()
        sum(ref.values()).backward()
        expected = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        balancer = GradientBalancer(_Equal(), space=space, engine="loop")
        values, features = losses()
        ctx = StepContext(
            step=0,
            backward=lambda total: total.backward(),
            loss_values={t: float(v.detach()) for t, v in values.items()},
            model=model,
            features={"s": features},
            source_tasks={"s": list(TASKS)},
            env=DistEnv(device=torch.device("cpu")),
            scaler=None,
        )
        balancer.backward(values, ctx)
        for (pname, p), g in zip(model.named_parameters(), expected, strict=True):
            assert p.grad is not None, f"{name}/{space}: {pname} got no gradient"
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6, msg=f"{name}/{space}: {pname}")


@pytest.mark.parametrize("name", NAMES)
def test_save_load_roundtrip_and_subset(tmp_path, name):
    model = toy_model(spec_of(name)).eval()
    x = torch.randn(6, 20)
    model.save_pretrained(tmp_path / "m")
    loaded = JointModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config()["architecture"] == model.config()["architecture"]
    full, again = model(x), loaded(x)
    assert all(torch.equal(full[t], again[t]) for t in TASKS)
    subset = JointModel.from_pretrained(tmp_path / "m", tasks=["c", "a"]).eval()
    part = subset(x)
    assert set(part) == {"c", "a"}
    for t in part:
        torch.testing.assert_close(part[t], full[t], rtol=0, atol=1e-6)
    assert sum(p.numel() for p in subset.parameters()) < sum(p.numel() for p in model.parameters())
    # the subset saves and loads again on its own
    subset.save_pretrained(tmp_path / "s")
    reloaded = JointModel.from_pretrained(tmp_path / "s").eval()
    assert all(torch.equal(reloaded(x)[t], part[t]) for t in part)


@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_is_independent(name):
    model = toy_model(spec_of(name)).eval()
    twin = copy.deepcopy(model)
    x = torch.randn(4, 20)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
    assert all(torch.equal(model(x)[t], toy_model(spec_of(name)).eval()(x)[t]) for t in TASKS)
    assert not torch.equal(twin(x)["a"], model(x)["a"])


def _spaces(name: str) -> list[tuple[str, dict, str]]:
    """(label, balancing spec, regime) triples: loss space, params, and rep where supported."""
    cases = []
    for regime in ("shared", "per_task"):
        cases.append(("loss", {"name": "uw"}, regime))
        cases.append(("params", {"name": "upgrad", "space": "params"}, regime))
    if toy_model(spec_of(name)).architecture.shared_representation:
        cases.append(("rep", {"name": "upgrad", "space": "rep"}, "shared"))
    return cases


@pytest.mark.parametrize(
    ("name", "space", "balancing", "regime"),
    [(n, *case) for n in NAMES for case in _spaces(n)],
    ids=[f"{n}-{c[0]}-{c[2]}" for n in NAMES for c in _spaces(n)],
)
def test_trains_through_the_trainer(tmp_path, name, space, balancing, regime):
    tasks = ["digit", "parity", "large"]
    trainer = toy_trainer(tmp_path, spec_of(name, tasks), balancing, regime)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.fit()
    assert summary["status"] == "completed"
    after = trainer.model.state_dict()
    for p_name, p in trainer.model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(before[p_name], after[p_name]), f"{name}/{space}/{regime}: {p_name} never updated"
    saved = JointModel.from_pretrained(tmp_path / "out" / "best")
    assert saved.config()["architecture"]["name"] == name


@pytest.mark.parametrize("name", NAMES)
def test_amp_bf16_step(tmp_path, name):
    """bf16 autocast (CPU here, CUDA alike): finite losses, every trainable parameter updated."""
    trainer = toy_trainer(
        tmp_path,
        spec_of(name, ["digit", "parity", "large"]),
        {"name": "ew"},
        "shared",
        **{"train.amp": "bf16", "train.max_steps": 2, "train.eval_every": 2},
    )
    assert trainer.precision.dtype is torch.bfloat16
    record = trainer.train_step()
    assert all(math.isfinite(v) for k, v in record.items() if k.startswith("loss/"))


@pytest.mark.parametrize("name", ["branched", "mmoe", "ple"])
def test_exact_resume(tmp_path, name):
    spec, method = spec_of(name, ["digit", "parity", "large"]), {"name": "upgrad", "space": "params"}
    steps = {"train.max_steps": 6, "train.eval_every": 3}
    full = toy_trainer(tmp_path / "a", spec, method, "shared", **steps)
    full.fit()
    first = toy_trainer(tmp_path / "b", spec, method, "shared", **steps)
    original = first.train_step

    def stop_after_step_4() -> dict:
        record = original()
        if first.step == 3:
            first.request_stop()
        return record

    first.train_step = stop_after_step_4  # type: ignore[method-assign]
    assert first.fit()["status"] == "interrupted"
    resumed = toy_trainer(tmp_path / "b", spec, method, "shared", **steps)
    assert resumed.fit(resume=True)["status"] == "completed"
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), f"{name}: resumed run diverged"


@pytest.mark.parametrize("name", NAMES)
def test_in_memory_subset_and_reordered_tasks(tmp_path, name):
    """``subset`` (e.g. per-task fine-tuning) keeps the kept tasks' function; a reordered task list
    loads per-task rows (stacked gates) in the new order."""
    model = toy_model(spec_of(name)).eval()
    x = torch.randn(5, 20)
    full = model(x)
    for tasks in (["b"], ["c", "b", "a"]):
        part = model.subset(tasks).eval()
        assert list(part.tasks) == tasks
        out = part(x)
        for t in tasks:
            torch.testing.assert_close(out[t], full[t], rtol=0, atol=1e-6)
    model.save_pretrained(tmp_path / "m")
    reordered = JointModel.from_pretrained(tmp_path / "m", tasks=["c", "b", "a"]).eval()(x)
    for t in TASKS:
        torch.testing.assert_close(reordered[t], full[t], rtol=0, atol=1e-6)
