"""The option parser of every ``srt`` stage: TRL's ``TrlParser`` (each field a flag, ``--config FILE`` YAML under
them) with the user's mistakes reported as one line naming the option or the key, through ``run_cli``.

- an unknown flag is reported first, with the closest known one, instead of argparse's usage and "required" error;
- a YAML key may be any spelling of its flag (``model``, ``max-length``); a negated flag (``no_plot``) is refused
  with the key to write instead, since ``no_plot: false`` would read as a double negative;
- ``--no_X`` flags say they turn ``--X`` off rather than repeat its help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import field
from typing import Any

from trl import TrlParser

from srt_trainer.errors import SRTUserError, did_you_mean

CONFIG_HELP = (
    "Options can also come from a YAML file, --config FILE: one key per option, spelled as its flag without the "
    "dashes (output: x.jsonl, plot: false); flags on the command line override the file."
)
_HELP = ("-h", "--help")


def offset_field() -> Any:
    """``--offset``, declared once for every reader that also takes ``--limit``."""
    return field(
        default=0,
        metadata={
            "help": "Skip the first N rows of the file (with --limit, the release's start / end indices, to split "
            "work by hand); row indices in the outputs stay those of the file."
        },
    )


class StageParser(TrlParser):
    """``TrlParser`` over a stage's dataclasses; ``note`` starts the description of ``--help`` (``%(prog)s``
    expands to the command)."""

    def __init__(self, dataclass_types: Any, prog: str, note: str = "", **kwargs: Any) -> None:
        super().__init__(dataclass_types, prog=prog, description=f"{note} {CONFIG_HELP}".strip(), **kwargs)
        self._config_file: str | None = None
        for action in self._actions:
            if _negates(action):
                action.help = f"Turn off --{action.dest}."
                action.default = argparse.SUPPRESS  # the flag it negates sets the default; no "(default: False)"

    def _spellings(self) -> tuple[dict[str, str], dict[str, str]]:
        """Every spelling of a flag without its dashes → the field it sets, and the same for negated flags.
        Built when parsing, so flags added after construction (``srt score --max_length``) count."""
        names: dict[str, str] = {}
        negated: dict[str, str] = {}
        for action in self._actions:
            if not action.option_strings or action.dest == "help":
                continue
            target = negated if _negates(action) else names
            for option in action.option_strings:
                target[option.lstrip("-").replace("-", "_")] = action.dest
            if target is names:
                names[action.dest] = action.dest
        return names, negated

    def set_defaults_with_config(self, **kwargs: Any) -> list[str]:
        names, negated = self._spellings()
        where = self._config_file
        fields: dict[str, Any] = {}
        given_as: dict[str, str] = {}
        unknown: list[str] = []
        for key, value in kwargs.items():
            name = key.replace("-", "_")
            if where is not None and name in negated:
                positive = "true" if value is False else "false"
                raise SRTUserError(f"key {key} in {where}: write {negated[name]}: {positive} instead")
            if name not in names:
                unknown.append(key)
                continue
            field = names[name]
            if field in fields:
                raise SRTUserError(f"{given_as[field]} and {key} in {where or 'the defaults'} set the same option")
            fields[field], given_as[field] = value, key
        if unknown and where is not None:
            hints = [f"{key}{did_you_mean(key.replace('-', '_'), names)}" for key in unknown]
            raise SRTUserError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)} in {where}")
        remaining = super().set_defaults_with_config(**fields)
        return remaining + [item for key in unknown for item in (f"--{key}", str(kwargs[key]))]

    def _refuse_unknown_options(self, args: list[str]) -> None:
        """Report the first unknown flag before argparse does: it would say only which required flag is missing
        (the one misspelled), after its whole usage."""
        known = [*self._option_string_actions, "--config"]
        for arg in args:
            if arg == "--":
                return
            if not arg.startswith("-") or arg == "-" or " " in arg or self._negative_number_matcher.match(arg):
                continue  # a value, as argparse reads it
            option = arg.split("=", 1)[0]
            prefix = self.allow_abbrev and option.startswith("--") and any(k.startswith(option) for k in known)
            if option in known or prefix:
                continue  # argparse completes a unique prefix, and names the choices of an ambiguous one
            raise SRTUserError(f"unknown option {option}{did_you_mean(option, known)}")

    def parse_args_and_config(
        self,
        args: Iterable[str] | None = None,
        return_remaining_strings: bool = False,
        fail_with_unknown_args: bool = True,
        separate_remaining_strings: bool = False,
    ) -> tuple[Any, ...]:
        args = list(sys.argv[1:] if args is None else args)
        # TRL reads only `--config FILE`, as two words
        args = [part for arg in args for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
        if "--config" in args and args.index("--config") == len(args) - 1:
            raise SRTUserError("--config needs a FILE (YAML)")
        if not any(arg in _HELP for arg in args):
            self._refuse_unknown_options(args)
        self._config_file = args[args.index("--config") + 1] if "--config" in args else None
        try:
            return super().parse_args_and_config(
                args, return_remaining_strings, fail_with_unknown_args, separate_remaining_strings
            )
        finally:
            self._config_file = None

    def parse_args_into_dataclasses(  # type: ignore[override]
        self, args: Any = None, return_remaining_strings: bool = False, **kwargs: Any
    ) -> tuple[Any, ...]:
        *outputs, remaining = super().parse_args_into_dataclasses(args, return_remaining_strings=True, **kwargs)
        if return_remaining_strings:
            return (*outputs, remaining)
        if remaining:  # options are checked above: these are words no option takes
            raise SRTUserError(f"unexpected argument{'s' if len(remaining) > 1 else ''} {' '.join(remaining)}")
        return tuple(outputs)


def _negates(action: argparse.Action) -> bool:
    """The ``--no_X`` complement HfArgumentParser adds to a boolean field that defaults to true."""
    return isinstance(action, argparse._StoreFalseAction) and action.option_strings[0].startswith("--no_")
