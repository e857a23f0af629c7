"""The packaged all-MiniLM-L6-v2 end to end on small generated text (offline)."""

from __future__ import annotations

from pathlib import Path

from core.experiments.run import train
from core.model import JointModel
from nlp.encoder import resolve
from nlp.predict import predict_records

from .test_train import make_data, run_config


def test_minilm_joint_train_save_predict(tmp_path: Path) -> None:
    assert (Path(resolve("minilm")) / "model.safetensors").is_file()
    config = run_config("minilm", make_data(tmp_path / "data", n=8), tmp_path / "run", freeze_layers=5)
    config.train.max_steps = 2
    report = train(config)
    assert 0.0 <= report["tasks"]["sentiment"]["accuracy"] <= 1.0
    model = JointModel.from_pretrained(tmp_path / "run" / "best")
    assert model.backbone.out_dim == 384 and model.backbone.encoder.config.num_hidden_layers == 6
    text = "Alice watched a great movie in Paris"
    (record,) = predict_records(model, [{"text": text}])
    assert record["sentiment"]["label"] in ("neg", "pos")
    for entity in record["ner"]["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"]
