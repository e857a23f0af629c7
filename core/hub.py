"""Joint models on the Hugging Face Hub: resolving ``org/name`` ids, the model card, the push payload.

``huggingface_hub`` is imported inside the functions, so ``core`` still imports with torch alone.
A hub id is only ever resolved to a local snapshot folder; what is loaded from it goes through
``JointModel.from_pretrained``'s checks like any folder (import paths refused unless trusted).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .errors import CheckpointError

CARD_NAME = "README.md"
LIBRARY = "jointtrain"
#: what a model folder holds that belongs on the Hub (config, weights, card, preprocessing)
PAYLOAD_PATTERNS = ("config.json", "model.safetensors", CARD_NAME, "tokenizer/*", "*.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def is_repo_id(name: str) -> bool:
    """``org/name`` with hub-legal characters (a folder that exists always wins over an id)."""
    return bool(_REPO_ID.match(name)) and ".." not in name


def looks_like_hub_id(name: str) -> bool:
    """A hub id that is not a mistyped local path: ``runs/dmeo`` is local when ``runs/`` exists."""
    return is_repo_id(name) and not Path(name.split("/")[0]).is_dir()


def missing_path(path: Path) -> str:
    """Which part of ``path`` is missing, with the closest name beside it (a typo in a run folder)."""
    found = Path(path.anchor)
    parts = path.parts[1:] if path.anchor else path.parts
    for i, part in enumerate(parts):
        if not (found / part).exists():
            names = [p.name for p in found.iterdir()] if found.is_dir() else []
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {Path(path.anchor, *parts[:i], close[0], *parts[i + 1 :])}?" if close else ""
            return f"{path} does not exist: there is no {found / part}{hint}"
        found = found / part
    return f"{path} does not exist"


def library_version() -> str:
    try:
        return version(LIBRARY)
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


def resolve(name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local model folder, or the snapshot of hub repo ``org/name`` at ``revision`` (downloaded once;
    with ``HF_HUB_OFFLINE=1`` only the local hub cache is read)."""
    path = Path(name_or_path)
    if path.exists() or not looks_like_hub_id(str(name_or_path)):
        if revision is not None:
            raise CheckpointError(f"revision={revision!r} applies to hub ids only, but {path} is a local path")
        if not path.exists():
            raise CheckpointError(missing_path(path))
        return path
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:
        raise CheckpointError(
            f"'{name_or_path}' is not a local folder; loading it from the Hub needs huggingface_hub: "
            "pip install huggingface_hub"
        ) from e
    try:
        folder = snapshot_download(
            str(name_or_path),
            revision=revision,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            allow_patterns=list(PAYLOAD_PATTERNS),
        )
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"'{name_or_path}' (revision {revision or 'main'}) is neither a local folder nor in the hub cache, "
            f"and the Hub cannot be reached (offline mode?): {e}. Download it while online or give a folder."
        ) from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"hub repo '{name_or_path}' does not exist or is private (log in?): {e}") from e
    except HfHubHTTPError as e:
        raise CheckpointError(f"cannot download '{name_or_path}' (revision {revision or 'main'}): {e}") from e
    return Path(folder)


def _metric_table(results: Mapping[str, Any]) -> list[str]:
    """Rows ``| split | task | metric | value |`` from ``{split: {task: {metric: value}}}``."""
    rows = []
    for split, tasks in results.items():
        for task, metrics in (tasks or {}).items():
            for metric, value in (metrics or {}).items():
                if isinstance(value, (int, float)) and metric != "loss":
                    rows.append(f"| {split} | {task} | {metric} | {value:.4f} |")
    return ["| split | task | metric | value |", "|---|---|---|---|", *rows] if rows else []


def model_card(
    config: Mapping[str, Any],
    results: Mapping[str, Any] | None = None,
    training_config: str | None = None,
) -> str:
    """The ``README.md`` of a model folder: Hub metadata, tasks with their label names, metrics
    (``{split: {task: {metric: value}}}``) and the training config when known, how to load it."""
    tasks = config.get("tasks", {})
    backbone = config.get("backbone", {})
    lines = ["---", f"library_name: {LIBRARY}", "tags:", "- multi-task", "- jointtrain", "---", ""]
    lines += ["# Joint model", "", f"One shared `{backbone.get('name', 'backbone')}` backbone"]
    if backbone.get("model"):
        lines[-1] += f" (`{backbone['model']}`)"
    arch = config.get("architecture", {}) or {}
    lines[-1] += f", `{arch.get('name', 'hard')}` sharing, {len(tasks)} task head(s)."
    lines += ["", "## Tasks", "", "| task | type | labels |", "|---|---|---|"]
    for name, spec in tasks.items():
        labels = spec.get("label_names") or []
        shown = ", ".join(map(str, labels[:20])) + (f", ... ({len(labels)})" if len(labels) > 20 else "")
        lines.append(f"| {name} | {spec.get('type', '?')} | {shown or '-'} |")
    table = _metric_table(results or {})
    if table:
        lines += ["", "## Metrics", "", *table]
    if training_config:
        lines += ["", "## Training config", "", "```yaml", training_config.rstrip(), "```"]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from core.model import JointModel",
        "",
        'model = JointModel.from_pretrained("<this repo id or folder>")',
        "```",
        "",
        f"Saved with {LIBRARY} {library_version()} (format `{config.get('format', '?')}`); loading runs no code "
        "from the files (import paths are refused unless `trust_remote_code=True`).",
        "",
    ]
    return "\n".join(lines)


def run_results(model_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The metrics and resolved config of the run a model folder sits in (``run/best``), if any."""
    run = Path(model_dir).parent
    results: dict[str, Any] = {}
    try:
        saved = json.loads((run / "results.json").read_text())
        name = Path(model_dir).name
        results = {split: tasks for split, tasks in saved.get("models", {}).get(name, {}).items()}
    except (OSError, ValueError, AttributeError):
        pass
    config = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else None
    return results, config


def write_card(model_dir: str | Path) -> Path:
    """(Re)write a saved model's card from its config and its run's current results (e.g. once the
    test split has been scored, after the folder was saved)."""
    from .io import atomic_write_text

    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{model_dir} holds no readable config.json: {e}") from e
    results, training_config = run_results(model_dir)
    atomic_write_text(model_dir / CARD_NAME, model_card(config, results, training_config))
    return model_dir / CARD_NAME


def push_payload(model_dir: str | Path) -> list[Path]:
    """The files of a saved model folder that a push uploads (relative paths); refuses a folder that
    is not a complete model (no config, weights or card)."""
    model_dir = Path(model_dir)
    needed = ("config.json", "model.safetensors", CARD_NAME)
    missing = [n for n in needed if not (model_dir / n).is_file()]
    if missing:
        raise CheckpointError(
            f"{model_dir} cannot be pushed: it lacks {', '.join(missing)}; save it with JointModel.save_pretrained"
        )
    files = sorted(p.relative_to(model_dir) for p in model_dir.rglob("*") if p.is_file())
    return [f for f in files if any(f.match(pattern) for pattern in PAYLOAD_PATTERNS)]


def push_folder(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload joint model",
    token: str | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload the payload of ``model_dir``; returns the commit URL."""
    if not is_repo_id(repo_id):
        raise CheckpointError(f"'{repo_id}' is not a hub repo id; use 'org/name'")
    files = push_payload(model_dir)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(model_dir),
        revision=revision,
        commit_message=commit_message,
        allow_patterns=[str(f) for f in files],
    )
    return str(info)
