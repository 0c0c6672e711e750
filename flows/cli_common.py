"""What every ``atompipe`` command shares: the error line, ``KEY=VALUE`` options, loading a
campaign, and the option types several commands declare alike.

Nothing here imports torch, Prefect or MLflow: ``atompipe --help``, ``compare`` and ``ui`` stay
light (tests/unit/test_light_commands.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from flows.config import CampaignConfig

DEFAULT_STORE = "workspace/store.zarr"

# packages whose warnings and log records are ours to show; every other package's are kept off
# the terminal
OWN_PACKAGES = ("atomistic", "tasks", "flows")

CampaignArgument = Annotated[Path, typer.Argument(help="campaign YAML file")]
StoreOption = Annotated[str, typer.Option(help="Zarr store path or fsspec URL")]
# ``--set`` of the commands that run nothing of their own (compare, ui, serve)
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="override a key, as for `atompipe run`")
]


def fail(message: object) -> NoReturn:
    """Print one red ``error:`` line on stderr and exit with status 1.

    Parameters
    ----------
    message : object
        What went wrong; a ``KeyError`` prints its message without the quotes ``str`` adds.

    Raises
    ------
    typer.Exit
        Always, with code 1.
    """
    if isinstance(message, KeyError) and message.args:  # str(KeyError) adds quotes
        message = message.args[0]
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def note(message: str) -> None:
    """Print a yellow notice on stderr (e.g. a GPU asked for and not found).

    Parameters
    ----------
    message : str
        The notice.
    """
    typer.secho(message, fg=typer.colors.YELLOW, err=True)


def parse_pairs(items: list[str] | None, option: str) -> dict:
    """``KEY=VALUE`` options as a dict, each value read as YAML (safe_load).

    Parameters
    ----------
    items : list of str or None
        The option's values as given.
    option : str
        The option's name, for the error line (``--set``, ``--param``).

    Returns
    -------
    dict
        Key to parsed value; an item without ``=`` exits with an error.
    """
    import yaml

    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"{option} {item!r}: expected KEY=VALUE")
        parsed[key] = yaml.safe_load(value)
    return parsed


def load_config(
    campaign: Path, overrides: list[str] | None = None, build_featurizers: bool = True
) -> CampaignConfig:
    """Load and validate a campaign file with its ``--set`` overrides, or exit with an error.

    Parameters
    ----------
    campaign : Path
        The campaign YAML file.
    overrides : list of str or None
        ``--set KEY=VALUE`` items.
    build_featurizers : bool
        Build the featurizers (imports torch); False for commands that compute nothing.

    Returns
    -------
    CampaignConfig
        The validated campaign.
    """
    from flows.config import ConfigError, load_campaign

    try:
        return load_campaign(
            campaign, parse_pairs(overrides, "--set"), build_featurizers=build_featurizers
        )
    except ConfigError as exc:
        fail(str(exc))
