"""srt_trainer: Selective Reflection-Tuning on transformers, TRL and accelerate.

A teacher rewrites instruction data, the student scores each rewrite with its own IFD / r-IFD and keeps what
suits it, then the student is fine-tuned on what it kept with TRL's SFTTrainer.
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes, imported by TRL in every stage, warns on import on CPUs with bf16 kernels that an optional kernel
# package for 4-bit CPU matmuls is missing, whether or not anything is quantized; only its errors are shown.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
