"""The serving engines and the OpenAI surface behind `workers.serve`, the Serve deployment.

- `engine`: the causal LM engine (batched decode loop, per-request sampling).
- `classifier`: the sequence classifier engine.
- `adapters`: LoRA adapters loaded on a base model, and the handles Serve's LRU evicts.
- `batching`: how a batch of requests is run on an engine (grouped, folded, streamed).
- `openai_api`: request bodies and OpenAI's completion, chat and SSE chunk objects.

Nothing here imports Ray Serve at module level: tests drive the engines directly.
"""
