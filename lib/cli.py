"""The command-line language of the kit's scripts: one spelling shown, both accepted.

Long options are written ``--flag_name``, as config keys are (``finetune_resnet.py --data_dir``) and as
``--help`` and the README show them; ``--flag-name`` is accepted everywhere as the same option. The rule
is here once, for every command of ``finetune_sweep.py`` (lib.config.parse_args applies the same one to
config keys). Standard library only: ``--help`` answers at once.
"""
from __future__ import annotations

import argparse


def option_key(option: str) -> str:
    """``--max-size-mb`` and ``--max_size_mb`` -> ``--max_size_mb``: how two spellings are one option."""
    return "--" + option[2:].replace("-", "_") if option.startswith("--") else option


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and so every subcommand's parser) that reads ``--flag-name`` as the
    ``--flag_name`` it declares, with or without ``=value``. Only options it knows are respelled: a
    value or an unknown option is left as written, for argparse to place or to refuse."""

    def parse_known_args(self, args=None, namespace=None):
        import sys

        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._respelled(args), namespace)

    def _respelled(self, args: list[str]) -> list[str]:
        known = {option_key(o): o for o in self._option_string_actions if o.startswith("--")}
        out = []
        for i, arg in enumerate(args):
            if arg == "--":   # what follows is positional, as written
                return out + args[i:]
            name, eq, value = arg.partition("=")
            key = option_key(name)
            # an abbreviation (--sweep-d) is respelled too, for argparse to expand as it does --sweep_d
            declared = known.get(key) or (key if any(k.startswith(key) for k in known) else None)
            out.append(f"{declared}{eq}{value}" if arg.startswith("--") and declared else arg)
        return out
