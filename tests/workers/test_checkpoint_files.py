"""A checkpoint's ``model/`` holds what serving needs to load it on its own (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.workers.factories import make_spec
from workers.checkpoints import MODEL_DIR, write_serving_files
from workers.data import load_tokenizer
from workers.spec import MANIFEST_FILE


def test_a_checkpoint_model_dir_carries_its_manifest_and_a_full_model_its_tokenizer(
    tmp_path: Path, models_dir: Path
) -> None:
    tokenizer = load_tokenizer("tiny:tiny-gpt2", str(models_dir))
    for adapter in ({"type": "lora"}, {"type": "full"}):
        directory = tmp_path / adapter["type"]
        (directory / MODEL_DIR).mkdir(parents=True)
        spec = make_spec(
            directory, task="causal_lm", adapter=adapter, labels=None, job_id="ftjob-ckpt"
        )
        write_serving_files(directory, spec, {"step": 4, "train_loss": 1.5}, tokenizer)
        model_dir = directory / MODEL_DIR
        manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
        assert manifest["job_id"] == "ftjob-ckpt" and manifest["adapter"] == adapter["type"]
        assert manifest["base_model"]["source"] == "tiny:tiny-gpt2"
        assert manifest["metrics"] == {"step": 4, "train_loss": 1.5}
        # A full model's folder is its served application's source: it needs a tokenizer.
        has_tokenizer = (model_dir / "tokenizer_config.json").is_file()
        assert has_tokenizer == (adapter["type"] == "full"), adapter
