"""End to end: train on generated scenes, save/load the joint model, predict from the CLI and scripts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from core.cli import main as cli
from core.errors import CheckpointError
from core.experiments.run import train
from core.model import JointModel
from core.rundir.directory import RunDir
from tests.vision.helpers import vision_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, scenes_root: Path) -> Path:
    tmp = tmp_path_factory.mktemp("joint")
    report = train(vision_config(tmp, scenes_root))
    assert set(report["tasks"]) == {"detection", "count"}
    assert set(report["tasks"]["detection"]) == {"map", "map_50", "loss"}
    assert set(report["tasks"]["count"]) == {"accuracy", "f1_macro", "loss"}
    return tmp / "run"


def _scene(trained: Path) -> Path:
    data = json.loads((trained / "best" / "config.json").read_text())["extra"]["data"]
    folder = next(Path(data["root"]).glob("scenes-*"))
    return folder / "images" / "test_00000.png"


def test_save_load_gives_identical_detections(trained, tmp_path):
    model = JointModel.from_pretrained(trained / "best")
    model.tasks["detection"].spec["score_threshold"] = 0.0  # compare many boxes, not only confident ones
    images = torch.stack([torch.from_numpy(np.array(Image.open(_scene(trained)))).permute(2, 0, 1)] * 2)
    first = model.predict(images)
    model.save_pretrained(tmp_path / "copy")
    again = JointModel.from_pretrained(tmp_path / "copy")
    again.tasks["detection"].spec["score_threshold"] = 0.0
    assert again.predict(images) == first
    assert len(first["detection"][0]) > 0
    assert again.backbone.export_spec()["pretrained"] is False


def test_checkpoint_with_another_class_count_is_refused(trained, tmp_path):
    model = JointModel.from_pretrained(trained / "best")
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["tasks"]["detection"]["num_classes"] = 12
    config["tasks"]["detection"]["label_names"] = None
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match its config"):
        JointModel.from_pretrained(tmp_path / "m")


def test_predict_cli_writes_json_and_png(trained, tmp_path, capsys):
    rgba = tmp_path / "scene.png"
    Image.open(_scene(trained)).convert("RGBA").resize((96, 96)).save(rgba)  # other size, other mode
    out = tmp_path / "pred.json"
    assert cli(["predict", str(trained), str(rgba), "--out", str(out)]) == 0
    (record,) = json.loads(out.read_text())["predictions"]
    assert set(record) == {"image", "detection", "count"}
    assert record["count"]["label"] in {"1", "2", "3"}
    for det in record["detection"]:
        assert set(det) == {"box", "score", "label", "index"}
        assert all(0 <= v <= 96 for v in det["box"])  # boxes are in the input image's pixels
    drawn = Image.open(tmp_path / "pred_scene.png")
    assert drawn.size == (288, 288)  # small images are enlarged for viewing


def test_predict_cli_missing_image_is_a_clear_error(trained, tmp_path, capsys):
    assert cli(["predict", str(trained), str(tmp_path / "nope.png"), "--out", str(tmp_path / "p.json")]) == 2
    assert "nope.png does not exist" in capsys.readouterr().err


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_script_single_task_and_per_task_regime(tmp_path, scenes_root, capsys):
    config = vision_config(tmp_path, scenes_root, {"sampler.name": "round_robin"}, regime="per_task")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    script = _script("train_vision")
    assert script.main(["--config", str(path), "--set", "train.max_steps=4"]) == 0
    assert "images/s" in capsys.readouterr().out
    assert script.main(["--config", str(path), "--tasks", "count", "--set", "train.max_steps=2"]) == 0
    report = RunDir(tmp_path / "run_count").summary()
    assert set(report["tasks"]) == {"count"}
    assert script.main(["--config", str(path), "--tasks", "colour"]) == 2


def _close(a, b) -> bool:
    """Equal predictions up to float rounding (batches of 1 and 2 take different kernels)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == pytest.approx(b, abs=1e-5) if isinstance(a, float) else a == b


def test_predict_from_python_takes_paths_and_tensors_of_any_size(trained):
    """Image paths and [C, H, W] tensors go through the CLI's reading: resize, boxes in each image's pixels."""
    from vision.data.images import read_image

    model = JointModel.from_pretrained(trained / "best")
    scene = _scene(trained)
    by_path = model.predict(str(scene))
    assert set(by_path) == {"detection", "count"} and len(by_path["count"]) == 1
    image = read_image(scene)
    big = torch.nn.functional.interpolate(image[None].float(), scale_factor=2.0)[0].round().to(torch.uint8)
    both = model.predict([scene, big])
    assert _close(both["count"][0], by_path["count"][0]) and _close(both["detection"][0], by_path["detection"][0])
    assert all(0 <= v <= 2 * image.shape[-1] for d in both["detection"][1] for v in d["box"])
    assert _close(model.predict(image), model.predict([image]))  # one [C, H, W] image
    confident = model.predict(scene, min_score=0.5)["detection"][0]
    assert all(d["score"] >= 0.5 for d in confident) and confident == [
        d for d in by_path["detection"][0] if d["score"] >= 0.5
    ]


def test_predict_cli_min_score(trained, tmp_path, capsys):
    """Detection used to write up to 100 boxes per image down to score 0.05, with no option."""
    scene = _scene(trained)
    args = ["predict", str(trained), str(scene)]
    assert cli([*args, "--out", str(tmp_path / "all.json")]) == 0
    assert cli([*args, "--out", str(tmp_path / "some.json"), "--min-score", "0.3"]) == 0
    (every,) = json.loads((tmp_path / "all.json").read_text())["predictions"]
    (some,) = json.loads((tmp_path / "some.json").read_text())["predictions"]
    assert some["detection"] == [d for d in every["detection"] if d["score"] >= 0.3]
    assert min(d["score"] for d in every["detection"]) < 0.3  # the option changed something


def test_evaluate_scores_a_labelled_coco_file_and_an_image_folder(trained, tmp_path, capsys):
    """``jointtrain evaluate --data`` on the user's own COCO file: the metrics of the same images as a split."""
    coco = _scene(trained).parent.parent / "test.json"
    assert cli(["evaluate", str(trained), "--out", str(tmp_path / "split.json")]) == 0
    assert cli(["evaluate", str(trained), "--data", str(coco), "--out", str(tmp_path / "file.json")]) == 0
    split, scored = (json.loads((tmp_path / f).read_text())["tasks"] for f in ("split.json", "file.json"))
    assert set(scored) == {"detection", "count"}
    for task in scored:
        assert scored[task] == pytest.approx(split[task], rel=1e-4), task

    model = JointModel.from_pretrained(trained / "best")
    predicted = model.predict(_scene(trained))["count"][0]["label"]
    other = next(n for n in model.tasks["count"].label_names if n != predicted)
    folder = tmp_path / "counts"
    for name in (predicted, other):  # the same scene in two class folders: exactly one is right
        (folder / name).mkdir(parents=True)
        Image.open(_scene(trained)).save(folder / name / "scene.png")
    assert cli(["evaluate", str(trained), "--data", str(folder), "--out", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["tasks"]["count"]["accuracy"] == pytest.approx(0.5)
    (folder / "99").mkdir()
    Image.open(_scene(trained)).save(folder / "99" / "scene.png")
    assert cli(["evaluate", str(trained), "--data", str(folder)]) == 2
    assert "task 'count' label(s) ['99'] are not among its classes" in capsys.readouterr().err
