"""Part `dpo` of bench/accuracy.py: SFT, then DPO on the SFT model, with SmolLM2.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/accuracy.py --part dpo [--quick]

Both jobs go the service's way (a `JobSpec` through `load_job_data`, `plan_steps` and
`build_trainer(...).fit()`, as `workers/run_job.py` runs them), the DPO job continuing the
SFT job's adapter (`init_from`), so its reference model is the SFT model.

- SFT: capital questions ("What is the capital of France?") answered "CAPITAL: Paris"
  (bench/accuracy.py's chat data), LoRA r=8 on all linear layers.
- DPO: on the same questions, the preferred answer has a property neither the base nor
  the SFT model has: it names the country after the capital ("CAPITAL: Paris (France)"),
  the other does not ("CAPITAL: Paris"). Train and held-out pairs use disjoint countries,
  so the held-out figures show the property was learned, not the pairs.

Figures (DPO model vs the SFT model it started from, held-out data):

- reward accuracy: the share of held-out pairs whose DPO reward of the preferred answer is
  above the other's (a tie counts half: the SFT model, which is the reference, scores 0.5)
  (target: >= 0.8)
- generations with the property: greedy answers to the held-out questions that name the
  question's country in brackets, "(Japan)" (target: more than the SFT model's)
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.accuracy import CAPITALS, QUESTIONS, SMOLLM, Row, run_service, write_jsonl

if TYPE_CHECKING:
    from workers.spec import JobSpec

# Countries held out of the DPO training pairs.
HELD_OUT = ["Japan", "Kenya", "Canada", "Norway", "Peru", "Egypt", "Mexico", "Greece"]
SHOWN = 4  # generations printed per model


def _question_pairs(countries: list[str]) -> list[tuple[str, str, str]]:
    return [(q.format(c), CAPITALS[c], c) for c in countries for q in QUESTIONS]


def sft_rows(countries: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    pairs = _question_pairs(countries)
    random.Random(seed).shuffle(pairs)
    return [
        {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": f"CAPITAL: {capital}"},
            ]
        }
        for question, capital, _ in (pairs[i % len(pairs)] for i in range(n))
    ]


def preference_rows(countries: list[str], seed: int) -> list[dict[str, Any]]:
    pairs = _question_pairs(countries)
    random.Random(seed).shuffle(pairs)
    return [
        {
            "input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [
                {"role": "assistant", "content": f"CAPITAL: {capital} ({country})"}
            ],
            "non_preferred_output": [{"role": "assistant", "content": f"CAPITAL: {capital}"}],
        }
        for question, capital, country in pairs
    ]


def _spec(tmp: Path, tag: str, train: str, args: argparse.Namespace, **fields: Any) -> JobSpec:
    from workers.spec import JobSpec

    return JobSpec.model_validate(
        {
            "job_id": f"bench-{tag}",
            "tenant_id": "bench",
            "base_model": {"name": SMOLLM[0], "source": SMOLLM[1]},
            "task": "causal_lm",
            "data_format": "chat",
            "training_file_uri": train,
            "output_uri": str(tmp / f"out-{tag}"),
            "seed": args.seed,
            "adapter": {
                "type": "lora",
                "r": 8,
                "alpha": 16,
                "dropout": 0.0,
                "target_modules": "all-linear",
            },
            "resources": {"num_workers": 1, "cpus_per_worker": float(args.cpus)},
            **fields,
        }
    )


def generations(
    models_dir: str, adapter_dir: Path, prompts: list[list[dict[str, str]]], tokens: int
) -> list[str]:
    """Greedy answers of the base model with the adapter in `adapter_dir`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workers.data import chat_prompt_ids, load_tokenizer
    from workers.sources import resolve_model_source

    tokenizer = load_tokenizer(SMOLLM[1], models_dir)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_source(SMOLLM[1], Path(models_dir)))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    answers = []
    with torch.inference_mode():
        for messages in prompts:
            ids = torch.tensor([chat_prompt_ids(tokenizer, messages)])
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
            answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return answers


def part_dpo(args: argparse.Namespace, tmp: Path, models_dir: str) -> tuple[list[Row], str]:
    from workers.report import read_json_lines

    train_countries = [c for c in CAPITALS if c not in HELD_OUT]
    sft_steps = 12 if args.quick else 40
    sft_train = write_jsonl(
        tmp / "dpo-sft.jsonl", sft_rows(list(CAPITALS), sft_steps * 8, args.seed)
    )
    sft = _spec(
        tmp,
        "dpo-sft",
        sft_train,
        args,
        training={
            "n_epochs": 1,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "max_length": 128,
            "checkpoint_every_steps": 10_000_000,
            "max_failures": 0,
        },
    )
    _, _, sft_adapter = run_service(sft, models_dir)
    print(f"dpo: SFT done ({sft_steps} steps)", flush=True)

    pairs = preference_rows(train_countries, args.seed)
    held_out = preference_rows(HELD_OUT, args.seed + 1)
    if args.quick:
        pairs, held_out = pairs[:32], held_out[:16]
    dpo = _spec(
        tmp,
        "dpo",
        write_jsonl(tmp / "dpo-train.jsonl", pairs),
        args,
        data_format="preference",
        method="dpo",
        dpo={"beta": args.beta},
        init_from={"model": "ft:bench-sft", "uri": str(sft_adapter), "adapter": "lora"},
        validation_file_uri=write_jsonl(tmp / "dpo-valid.jsonl", held_out),
        training={
            "n_epochs": 1 if args.quick else args.dpo_epochs,
            "batch_size": 8,
            "learning_rate": args.dpo_lr,
            "max_length": 128,
            "eval_at_start": True,
            "checkpoint_every_steps": 10_000_000,
            "max_failures": 0,
        },
    )
    _, _, dpo_adapter = run_service(dpo, models_dir)
    evals = [
        e.data
        for e in read_json_lines(str(Path(dpo.output_uri) / "events.jsonl"))
        if e.type == "eval"
    ]
    before, after = evals[0], evals[-1]

    questions = [(q.format(c), c) for c in HELD_OUT for q in QUESTIONS[:2]]
    prompts = [[{"role": "user", "content": q}] for q, _ in questions]
    said: dict[str, list[str]] = {
        "SFT": generations(models_dir, sft_adapter, prompts, 16),
        "DPO": generations(models_dir, dpo_adapter, prompts, 16),
    }
    countries = [country for _, country in questions]
    has = {
        name: sum(f"({c})" in answer for answer, c in zip(answers, countries, strict=True))
        for name, answers in said.items()
    }
    for name, answers in said.items():
        print(f"\n{name} model, held-out questions (greedy):")
        for (question, _), answer in list(zip(questions, answers, strict=True))[:SHOWN]:
            print(f"  {question!r} -> {answer!r}")
    n = len(questions)
    rows: list[Row] = [
        (
            "dpo  held-out reward accuracy (DPO | SFT start)",
            f"{after['eval_reward_accuracy']:.3f}",
            f"{before['eval_reward_accuracy']:.3f}",
            f"{after['eval_reward_accuracy'] - before['eval_reward_accuracy']:+.3f}",
            ">= 0.8",
        ),
        (
            "dpo  held-out DPO loss (DPO | SFT start)",
            f"{after['eval_loss']:.4f}",
            f"{before['eval_loss']:.4f}",
            f"{after['eval_loss'] - before['eval_loss']:+.4f}",
            "falls",
        ),
        (
            "dpo  generations naming the country (DPO | SFT)",
            f"{has['DPO']}/{n}",
            f"{has['SFT']}/{n}",
            f"{(has['DPO'] - has['SFT']) / n:+.0%}",
            "DPO > SFT",
        ),
    ]
    note = (
        f"dpo: SFT {sft_steps} steps, then DPO (beta {args.beta}, lr {args.dpo_lr}) on "
        f"{len(pairs)} pairs of {len(train_countries)} countries, continuing the SFT adapter; "
        f"held out: {len(held_out)} pairs and {n} questions on {len(HELD_OUT)} other countries"
    )
    return rows, note
