"""Fine-tune backends that train here, and the students they produce.

Training: ``lora`` trains LoRA adapters on open-weight chat models with TRL (SFT, DPO) and PEFT in a
job process of its own (``worker``), writing a versioned student directory with a manifest of hashes
(``students/<name>/v<N>/``); ``export`` turns a student into files vLLM, Ollama or transformers run.

Serving: ``generation`` loads a student once and batches concurrent requests into one ``generate``;
``chat`` checks OpenAI's request fields and builds its completion and chunk shapes; ``served`` is
the student the proxy calls; ``endpoints`` are students served elsewhere (vLLM, Ollama, llama.cpp,
an Azure deployment) behind an OpenAI-compatible URL.

Interfaces: ``cli``/``api`` (jobs) and ``students_cli``/``students_api`` (students); ``api_errors``
is how both routers answer a failure (OpenAI-style error JSON).

torch and transformers are imported inside the modules that need them, never here, so the proxy,
store and evals run without the ``lora`` extra.
"""
