"""Command-line edge of `poshost`: the only place errors become messages and exit codes."""

import click


@click.group()
def main() -> None:
    """poshost."""
