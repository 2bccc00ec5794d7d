"""Extra CLI subcommands: each module here exposes ``register(app: typer.Typer) -> None``."""
