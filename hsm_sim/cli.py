"""Command-line edge of `hsm-sim`: the only place errors become messages and exit codes."""

import click


@click.group()
def main() -> None:
    """hsm-sim."""
