"""Fine-tune backends that train here, and the students they produce.

``lora`` trains LoRA adapters on open-weight chat models with TRL (SFT, DPO) and PEFT in a job
process of its own (``worker``), writing a versioned student directory with a manifest of hashes
(``students/<name>/v<N>/``); ``export`` turns a student into files vLLM, Ollama or transformers run.
torch and transformers are imported inside the job process and the export only, never here, so the
proxy, store and evals run without them.
"""
