"""Command-line edge of `posterm`: the only place errors become messages and exit codes."""

import click


@click.group()
def main() -> None:
    """posterm."""
