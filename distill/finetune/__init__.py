"""Fine-tune backends for open-weight students (LoRA on TRL + PEFT) and the students they produce:
training jobs, their artifacts, and serving those students in-process or from another endpoint.

torch and transformers are imported lazily inside the modules that need them, so the proxy, store
and evals run without the ``lora`` extra installed.
"""
