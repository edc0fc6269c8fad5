"""Small offline models for tests, the demo and the embedded catalog.

`tiny:<name>` sources are built here from code alone: a byte-level BPE tokenizer trained
with `tokenizers` on a built-in corpus and a randomly initialised 2-layer model from a
config, saved with `save_pretrained` (safetensors). Building is deterministic, takes well
under a second and is idempotent; `workers.sources.resolve_model_source` calls it, so tiny
and real models go through the same loading code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY_PREFIX = "tiny:"
# Bumped whenever the builders change, so an old build on disk is never mistaken for a new one.
BUILD_VERSION = 3
_MARKER = "tuneplane_tiny.json"

# Weights are drawn wider than the HF default (0.02): with frozen tiny embeddings at that
# scale every logit stays within about +-1 (and a BERT's pooled output barely depends on
# its input), so an adapter could not move the loss far in a few steps and a test could
# not tell learning from noise. No dropout either: it only slows such small models down.
_INIT_RANGE = 0.2
_BERT_INIT_RANGE = 0.1

_CORPUS_LINES = (
    "The quick brown fox jumps over the lazy dog.",
    "A fine-tuned model learns the patterns in its training data.",
    "Hello! How can I help you today?",
    "Please summarise this paragraph in one sentence.",
    "The service trains models on a Ray cluster and serves them behind an API.",
    "I loved this movie, the acting was wonderful and the story was great.",
    "This was a terrible film, boring and far too long.",
    "The weather is nice today, sunny and warm with a light breeze.",
    "Translate the following sentence into French.",
    "What is the capital of France? The capital of France is Paris.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20.",
    "user: hi there\nassistant: hello, what can I do for you?",
    "Question: what colour is the sky? Answer: blue.",
    "red green blue yellow orange purple black white grey pink brown",
    "apple banana cherry grape lemon mango orange peach pear plum",
    "cat dog bird fish horse cow sheep goat mouse lion tiger bear",
    "one two three four five six seven eight nine ten",
    "positive negative neutral good bad happy sad great awful fine",
    "def main():\n    print('hello world')\n    return 0",
    '{"prompt": "Say hi", "completion": "hi"}',
)

# A Jinja chat template that renders incrementally: rendering the first k messages with
# add_generation_prompt=True is always a prefix of rendering k+1, which the data pipeline
# relies on to mask prompt tokens.
_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _train_tokenizer(special_tokens: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating the corpus gives the frequent words enough weight to become merges.
    tokenizer.train_from_iterator(list(_CORPUS_LINES) * 4, trainer=trainer)
    return tokenizer


def _seed() -> None:
    import torch

    torch.manual_seed(0)


def _build_gpt2(out: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    backend = _train_tokenizer([eos], vocab_size=512)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=eos,
        eos_token=eos,
        unk_token=eos,
        pad_token=eos,
        model_max_length=256,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    eos_id = backend.token_to_id(eos)
    config = GPT2Config(
        vocab_size=backend.get_vocab_size(),
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_inner=128,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        initializer_range=_INIT_RANGE,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    _seed()
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_llama(out: Path) -> None:
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    backend = _train_tokenizer(specials, vocab_size=512)
    bos_id = backend.token_to_id("<s>")
    # Llama tokenizers put BOS in front of every encoded text.
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=256,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=bos_id,
        eos_token_id=backend.token_to_id("</s>"),
        pad_token_id=backend.token_to_id("<pad>"),
        tie_word_embeddings=True,
        initializer_range=_INIT_RANGE,
    )
    _seed()
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_bert(out: Path) -> None:
    from tokenizers import processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = _train_tokenizer(specials, vocab_size=512)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=256,
    )
    config = BertConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
        pad_token_id=backend.token_to_id("[PAD]"),
        initializer_range=_BERT_INIT_RANGE,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    # The head size is the job's: the worker replaces the head to fit the job's labels.
    config.num_labels = 2
    _seed()
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-gpt2": _build_gpt2,
    "tiny-llama": _build_llama,
    "tiny-bert": _build_bert,
}


def is_tiny(source: str) -> bool:
    return source.startswith(TINY_PREFIX)


def _is_built(path: Path) -> bool:
    marker = path / _MARKER
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("version") == BUILD_VERSION)
    except (OSError, ValueError):
        return False


def build(name: str, models_dir: Path) -> Path:
    """Build tiny model `name` under `models_dir` unless it is there already; returns its dir.

    The model is written to a temporary directory next to its final place and renamed
    into it, so a concurrent reader (another worker on the node) sees all of it or none.
    """
    if name not in BUILDERS:
        known = ", ".join(sorted(BUILDERS))
        raise ValueError(f"unknown tiny model {name!r}; known: {known}")
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / name
    if _is_built(target):
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir))
    try:
        BUILDERS[name](staging)
        (staging / _MARKER).write_text(json.dumps({"name": name, "version": BUILD_VERSION}))
        if target.exists() and not _is_built(target):
            # A stale build from an older BUILD_VERSION (or a crash of an old layout).
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            # Another builder renamed its copy first; theirs is identical.
            if not _is_built(target):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def default_models_dir() -> Path:
    return Path(os.environ.get("TUNEPLANE_MODELS_DIR", "~/.cache/tuneplane/models")).expanduser()
