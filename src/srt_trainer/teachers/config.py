"""Options of the teacher, declared once: the LLM that rewrites pairs (``srt reflect``, ``srt run``) and the one that
judges answers (``srt eval judge``) are both a teacher, reached the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from srt_trainer.teachers.base import SamplingConfig, TeacherConfigError

TEACHER_KINDS = ("openai", "transformers", "vllm")


def split_base_urls(base_url: str | None) -> list[str]:
    """The endpoints ``--base_url`` names, each in one spelling: one URL, or several separated by commas (replicas of
    one teacher). Spaces, empty parts and trailing slashes are dropped and the scheme and host are lower-cased, so
    that ``URL``, `` URL/`` and ``URL,`` are one endpoint (and one cache key); None is the provider's default host.
    A value that names no endpoint, a part that is not an http(s) URL, or one endpoint named twice is refused."""
    from urllib.parse import urlsplit, urlunsplit

    if base_url is None:
        return []
    urls: list[str] = []
    for part in base_url.split(","):
        text = part.strip()
        if not text:
            continue
        parts = urlsplit(text)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise TeacherConfigError(f"--base_url: {text!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1")
        netloc = parts.netloc if "@" in parts.netloc else parts.netloc.lower()
        url = urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), parts.query, parts.fragment))
        if url in urls:
            raise TeacherConfigError(f"--base_url names the endpoint {url} twice: {base_url!r}")
        urls.append(url)
    if not urls:
        raise TeacherConfigError(
            f"--base_url {base_url!r} names no endpoint: give one URL (or several, separated by commas), or leave it "
            "out for api.openai.com"
        )
    return urls


def normalize_base_url(base_url: str | None) -> str | None:
    """``--base_url`` in its one spelling (see ``split_base_urls``); None stays None."""
    return ",".join(split_base_urls(base_url)) if base_url is not None else None


@dataclass
class TeacherArguments:
    """The teacher LLM: which one, how it samples, and how it is asked (YAML keys or flags; ``srt eval judge`` also
    reads ``--judge`` and ``--judge_model``). The API key is read from ``OPENAI_API_KEY``, never from a flag or a
    file."""

    teacher: str = field(
        default="transformers",
        metadata={
            "help": "openai (any OpenAI-compatible endpoint), transformers (a local model) or vllm (vLLM's offline "
            "engine).",
            "choices": list(TEACHER_KINDS),
            "aliases": ["--judge"],
        },
    )
    teacher_model: str | None = field(
        default=None,
        metadata={
            "help": "The teacher's model: the served name for openai (required; the paper used ChatGPT to reflect "
            "and GPT-4 to judge); a folder, hub id or 'embedded' (default) otherwise. In `srt run`, unset with a "
            "transformers teacher: the student itself, already loaded, teaches.",
            "aliases": ["--judge_model", "--judge-model"],
        },
    )
    base_url: str | None = field(
        default=None,
        metadata={
            "help": "openai: the endpoint, e.g. http://127.0.0.1:8000/v1 (default: api.openai.com); several, separated "
            "by commas, are replicas of one teacher (vLLM, TGI, transformers serve): each request goes to the least "
            "loaded, a failing one rests while the others take its requests, and the cache does not depend on "
            "which one answered."
        },
    )
    teacher_max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Longest teacher answer, in tokens. Unset: the release's rule, per request min(2048, "
            "teacher_context_length - prompt tokens); prompt tokens are exact for transformers and vllm (the "
            "model's tokenizer) and approximated for openai (4 characters a token, plus 4 a message)."
        },
    )
    teacher_context_length: int = field(
        default=4096,
        metadata={
            "help": "The teacher's context, in tokens (4096: ChatGPT of the paper's time); sets the answer "
            "budget when teacher_max_tokens is unset."
        },
    )
    teacher_temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature (0: greedy, as the paper's release asked)."}
    )
    teacher_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    teacher_seed: int | None = field(default=None, metadata={"help": "Sampling seed sent to the teacher."})
    max_reasks: int = field(
        default=1,
        metadata={
            "help": "Ask again this many times when an answer is unusable (reflection: no usable tags, as the "
            "release retried once; judging: no readable scores); then reflection keeps the original text."
        },
    )
    reask_temperature: float | None = field(
        default=0.7,
        metadata={"help": "Temperature of a re-ask of a greedy request (a greedy teacher would repeat itself)."},
    )
    prefill: str = field(
        default="auto",
        metadata={
            "help": "Reflection: start the teacher's reply with the mode's tag ([New Instruction] / [Better Answer]); "
            "auto = on for local teachers, off for API teachers. On with openai, the request asks the server to "
            "continue that start (continue_final_message: vLLM and SGLang servers; OpenAI's API has no such field).",
            "choices": ["auto", "on", "off"],
        },
    )
    teacher_concurrency: int = field(default=64, metadata={"help": "openai: requests in flight at most."})
    max_retries: int = field(
        default=8,
        metadata={
            "help": "openai: retries of a request after 408, 409, 429, 5xx or a dropped connection (exponential "
            "backoff with jitter, Retry-After honoured), and re-sends of an unreadable body; a time-out is sent "
            "again only once (see request_timeout)."
        },
    )
    request_timeout: float | None = field(
        default=None,
        metadata={
            "help": "openai: seconds per request (default: 1800 for a server on this machine or network, where "
            "requests queue, 120 for a remote API). A timed-out request is sent again once, with twice the "
            "time-out, and fewer requests are kept in flight from then on."
        },
    )
    teacher_batch_size: int = field(default=8, metadata={"help": "transformers: conversations per generate call."})
    teacher_dtype: str = field(
        default="float32",
        metadata={
            "help": "transformers, vllm: the teacher's dtype (bfloat16 on a GPU; float32 is exact on a CPU).",
            "choices": ["float32", "bfloat16", "float16"],
        },
    )
    teacher_device: str | None = field(default=None, metadata={"help": "transformers: cpu, cuda, cuda:N or auto."})
    teacher_vllm_options: str | None = field(
        default=None,
        metadata={
            "help": "vllm: further arguments of vllm.LLM, as a JSON object such as "
            '{"tensor_parallel_size": 2, "max_model_len": 8192}; on a CPU {"enforce_eager": true, '
            '"kv_cache_memory_bytes": 2000000000} (or set VLLM_CPU_KVCACHE_SPACE, in GiB).'
        },
    )
    teacher_trust_remote_code: bool = field(
        default=False, metadata={"help": "transformers, vllm: run model code from the teacher's folder."}
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "The durable cache of the teacher's answers (default: <output stem>.teacher-cache.jsonl beside "
            "the output). Answers in it are never asked again."
        },
    )

    export_requests: str | None = field(
        default=None,
        metadata={
            "help": "openai: send nothing; write the requests the cache does not hold to this OpenAI batch input file "
            "(JSONL; what `vllm run-batch` and providers' batch APIs read) and stop."
        },
    )
    import_results: str | None = field(
        default=None,
        metadata={
            "help": "openai: take the answers from this batch output file (JSONL, as `vllm run-batch` and batch APIs "
            "write it) instead of asking; with --export_requests, requests it lacks are exported and the run stops."
        },
    )

    teacher_batch: bool = field(
        default=False,
        metadata={
            "help": "openai: send the requests the cache lacks through the provider's Batch API (files and batches "
            "endpoints; at OpenAI half the price and no rate limit, answered within 24 h) and wait for them. The "
            "submitted batches are recorded beside the teacher cache: a killed run, started again with the same "
            "command, picks them up instead of submitting again."
        },
    )
    teacher_batch_poll: float = field(
        default=60.0, metadata={"help": "--teacher_batch: seconds between two looks at the batches' status."}
    )
    teacher_batch_max_requests: int = field(
        default=50_000, metadata={"help": "--teacher_batch: requests per batch at most (OpenAI's limit: 50,000)."}
    )
    teacher_batch_max_mb: float = field(
        default=200.0, metadata={"help": "--teacher_batch: size of a batch's input file at most, in MB (OpenAI: 200)."}
    )
    teacher_batch_resubmits: int = field(
        default=1,
        metadata={
            "help": "--teacher_batch: times a request that failed, or that an expired or cancelled batch left "
            "unanswered, is submitted again before it counts as failed."
        },
    )

    def offline(self) -> bool:
        """Whether the teacher is answered through batch files rather than requests."""
        return self.export_requests is not None or self.import_results is not None

    def __post_init__(self) -> None:
        if self.teacher not in TEACHER_KINDS:
            raise TeacherConfigError(f"unknown teacher {self.teacher!r}; choose one of {', '.join(TEACHER_KINDS)}")
        if self.base_url is not None and self.teacher != "openai":
            raise TeacherConfigError(f"--base_url is for the openai teacher, not {self.teacher!r}")
        self.base_url = normalize_base_url(self.base_url)
        if self.teacher == "openai" and not self.teacher_model:
            raise TeacherConfigError("--teacher_model is required with the openai teacher: the served model's name")
        if self.offline() and self.teacher != "openai":
            raise TeacherConfigError(
                f"--export_requests / --import_results are for the openai teacher, not {self.teacher!r}"
            )
        if self.teacher_batch and self.teacher != "openai":
            raise TeacherConfigError(f"--teacher_batch is for the openai teacher, not {self.teacher!r}")
        if self.teacher_batch and len(split_base_urls(self.base_url)) > 1:
            raise TeacherConfigError("--teacher_batch sends to one provider: give --base_url a single endpoint")
        if self.teacher_batch and self.offline():
            raise TeacherConfigError(
                "--teacher_batch submits the requests itself: drop --export_requests / --import_results"
            )
        if self.teacher_batch_max_requests < 1 or self.teacher_batch_max_mb <= 0 or self.teacher_batch_poll < 0:
            raise TeacherConfigError(
                "--teacher_batch_max_requests and --teacher_batch_max_mb must be positive, "
                "--teacher_batch_poll 0 or more"
            )
        if self.teacher_vllm_options:
            if self.teacher != "vllm":
                raise TeacherConfigError(f"--teacher_vllm_options is for the vllm teacher, not {self.teacher!r}")
            from srt_trainer.vllm_engine import parse_vllm_options

            parse_vllm_options(self.teacher_vllm_options, "--teacher_vllm_options")  # fail before any work
        if self.teacher_context_length < 1:
            raise TeacherConfigError(f"--teacher_context_length must be positive, not {self.teacher_context_length}")
        if self.teacher_max_tokens is not None and self.teacher_max_tokens < 1:
            raise TeacherConfigError(f"--teacher_max_tokens must be positive, not {self.teacher_max_tokens}")

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            temperature=self.teacher_temperature,
            top_p=self.teacher_top_p,
            max_tokens=self.teacher_max_tokens,
            seed=self.teacher_seed,
            context_length=self.teacher_context_length,
        )

    def prefill_flag(self) -> bool | None:
        return {"auto": None, "on": True, "off": False}[self.prefill]

    def cache_path(self, default: Path) -> Path:
        """The cache file: ``teacher_cache`` when set, else ``default`` (beside the stage's output)."""
        return Path(self.teacher_cache) if self.teacher_cache else default
