"""The serving engines and the OpenAI surface behind `workers.serve`, the Serve deployment.

- `engine`: the causal LM engine (prefill, decode, join and split batches; sampling).
- `continuous`: continuous batching, the decode loop requests join and leave per step.
- `lora`: LoRA adapters applied per row in one pass (batched, gathered weights).
- `classifier`: the sequence classifier engine.
- `adapters`: peft adapters on the classifier, and the handles Serve's LRU evicts.
- `batching`: how a batch of classification requests shares forward passes.
- `openai_api`: request bodies and OpenAI's completion, chat and SSE chunk objects.

Nothing here imports Ray Serve at module level: tests drive the engines directly.
"""
