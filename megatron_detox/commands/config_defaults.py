"""``--config CONFIG`` for the single-stage commands: a YAML file's section fills every option
the command line left out, so the same config drives ``sgeat run`` and the stage commands.

Options wired this way have ``default=None`` in argparse; :func:`fill_from_config` sets each
``None`` to the config section's value (the dataclass default without ``--config``).
Precedence: command-line flag > YAML file > dataclass default.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from megatron_detox.config import RunConfig, load_config


def add_config_option(parser: argparse.ArgumentParser, sections: str) -> None:
    parser.add_argument("--config", metavar="CONFIG",
                        help=f"YAML run config whose {sections} section(s) give the defaults of the options below "
                             "(a flag given here wins)")


def fill_from_config(args: argparse.Namespace, mapping: Mapping[str, str]) -> RunConfig:
    """``mapping``: argparse dest -> dotted config field (``generate.top_p``). Returns the config used."""
    cfg = load_config(args.config) if getattr(args, "config", None) else RunConfig()
    for dest, dotted in mapping.items():
        if getattr(args, dest, None) is None:
            section, name = dotted.split(".")
            setattr(args, dest, getattr(getattr(cfg, section), name))
    return cfg
