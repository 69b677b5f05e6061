"""srt_trainer: Selective Reflection-Tuning on transformers, TRL and accelerate.

A teacher rewrites instruction data, the student scores each rewrite with its own IFD / r-IFD and keeps what
suits it, then the student is fine-tuned on what it kept with TRL's SFTTrainer.
"""

__version__ = "0.1.0"
