"""Instruction-data formats and their normalization to one schema.

Every format becomes the same columns (see ``NORMALIZED_COLUMNS``):

- ``instruction``, ``input``, ``output``: the first exchange, Alpaca-style (``input`` is "" outside Alpaca);
- ``system``: a system prompt ("" when none);
- ``messages``: the turns as ``{"role": "user"|"assistant", "content": str}``, alternating and starting with the
  user; for Alpaca the user turn is the instruction, with the input on a new line when there is one;
- ``num_turns``: the number of assistant turns;
- ``source_format``: ``alpaca``, ``sharegpt`` or ``messages``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from srt_trainer.data.rejects import RowError

FORMATS = ("alpaca", "sharegpt", "messages")
NORMALIZED_COLUMNS = ("instruction", "input", "output", "system", "messages", "num_turns", "source_format")

# ShareGPT speaker names seen in the wild, mapped to chat roles.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}
MESSAGE_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


def detect_format(row: Mapping[str, Any]) -> str | None:
    """The format a row is in, from its keys; None when no known format fits."""
    if "conversations" in row:
        return "sharegpt"
    if "messages" in row:
        return "messages"
    if "instruction" in row or "output" in row:
        return "alpaca"
    return None


def _text(row: Mapping[str, Any], field: str, *, required: bool, label: str | None = None) -> str:
    label = label or field
    if field not in row or row[field] is None:
        if required:
            raise RowError(label, "missing field")
        return ""
    value = row[field]
    if not isinstance(value, str):
        raise RowError(label, f"not a string (got {type(value).__name__})")
    return value


def normalize_alpaca(row: Mapping[str, Any], require_output: bool = True) -> dict[str, Any]:
    # the common row (every field text, no system prompt) checked inline: this runs for every row of every stage
    get = row.get
    instruction, input_, output, system = get("instruction"), get("input"), get("output"), get("system")
    if type(instruction) is not str:
        instruction = _text(row, "instruction", required=True)
    if type(input_) is not str:
        input_ = _text(row, "input", required=False)
    # A row with only an input is usable: the statistics' instruction text is instruction + input.
    if (not instruction or instruction.isspace()) and (not input_ or input_.isspace()):
        raise RowError("instruction", "empty instruction")
    if type(output) is not str:
        output = _text(row, "output", required=require_output)
    if system is None:
        system = ""
    elif type(system) is not str:
        system = _text(row, "system", required=False)
    user = f"{instruction}\n{input_}" if input_ else instruction
    return {
        "instruction": instruction,
        "input": input_,
        "output": output,
        "system": system,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": output}],
        "num_turns": 1,
        "source_format": "alpaca",
    }


def _normalize_turns(
    turns: Any,
    field: str,
    role_key: str,
    content_key: str,
    roles: Mapping[str, str],
    fmt: str,
    require_output: bool,
) -> dict[str, Any]:
    if not isinstance(turns, list):
        raise RowError(field, f"not a list of turns (got {type(turns).__name__})")
    system = ""
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, Mapping):
            raise RowError(where, f"turn is not an object (got {type(turn).__name__})")
        raw_role = turn.get(role_key)
        if not isinstance(raw_role, str):
            raise RowError(f"{where}.{role_key}", "missing or non-string role")
        role = roles.get(raw_role.strip().lower())
        if role is None:
            raise RowError(f"{where}.{role_key}", f"unknown role {raw_role!r}")
        content = _text(turn, content_key, required=True, label=f"{where}.{content_key}")
        if role == "system":
            if messages or system:
                raise RowError(f"{where}.{role_key}", "system turn after the conversation started")
            system = content
            continue
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        if role != expected:
            raise RowError(f"{where}.{role_key}", f"expected a {expected} turn, got {role} (turns must alternate)")
        messages.append({"role": role, "content": content})
    if not messages:
        raise RowError(field, "no user turn")
    if not messages[0]["content"].strip():
        raise RowError(f"{field}[0].{content_key}", "empty instruction")
    if require_output and len(messages) < 2:
        raise RowError(field, "no assistant turn")
    if require_output and messages[-1]["role"] == "user":
        raise RowError(field, "conversation ends with a user turn that has no response")
    return {
        "instruction": messages[0]["content"],
        "input": "",
        "output": messages[1]["content"] if len(messages) > 1 else "",
        "system": system,
        "messages": messages,
        "num_turns": len(messages) // 2,
        "source_format": fmt,
    }


def normalize_sharegpt(row: Mapping[str, Any], require_output: bool = True) -> dict[str, Any]:
    if "conversations" not in row:
        raise RowError("conversations", "missing field")
    return _normalize_turns(
        row["conversations"], "conversations", "from", "value", SHAREGPT_ROLES, "sharegpt", require_output
    )


def normalize_messages(row: Mapping[str, Any], require_output: bool = True) -> dict[str, Any]:
    if "messages" not in row:
        raise RowError("messages", "missing field")
    return _normalize_turns(row["messages"], "messages", "role", "content", MESSAGE_ROLES, "messages", require_output)


NORMALIZERS = {"alpaca": normalize_alpaca, "sharegpt": normalize_sharegpt, "messages": normalize_messages}


def normalize_row(row: Any, fmt: str, require_output: bool = True) -> dict[str, Any]:
    """Normalize one raw row; raises ``RowError`` naming the field when the row is unusable.

    ``require_output=False`` accepts prompt-only rows (held-out or evaluation instructions): a missing response
    becomes "" and a conversation may end with the user.
    """
    if not isinstance(row, Mapping):
        raise RowError(None, f"row is not a JSON object (got {type(row).__name__})")
    return NORMALIZERS[fmt](row, require_output)
