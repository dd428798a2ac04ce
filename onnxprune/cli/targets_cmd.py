"""`onnxprune targets` (list the accelerator targets), `targets show NAME`, `targets check FILE...`."""

from __future__ import annotations

import click

from onnxprune.cli import verbosity_options
from onnxprune.core.report import fill, table
from onnxprune.pack.targets import all_targets, load_target, read_target_file


@click.group("targets", invoke_without_command=True)
@verbosity_options
@click.pass_context
def command(ctx: click.Context) -> None:
    """List the accelerator targets: name, pattern, dtypes, packed format and what each is for."""
    if ctx.invoked_subcommand is not None:
        return
    rows = []
    for t in all_targets():
        dtypes = ", ".join(t.dtypes) + (" (+" + ", ".join(t.converts) + ")" if t.converts else "")
        params = ",".join(f"{k}={v}" for k, v in t.format_params.items() if k != "compact")
        rows.append((t.name, str(t.pattern), dtypes, t.format + (f" {params}" if params else ""), t.description))
    click.echo(table(["target", "pattern", "dtypes", "format", "description"], rows, below="description"))
    click.echo("\n" + fill("`onnxprune targets show NAME` prints a target in full; "
                           "`onnxprune pack MODEL --target NAME -o DIR` packs a pruned model for it."))


@command.command("show")
@verbosity_options
@click.argument("name", metavar="NAME")
@click.option("--block", default=None, metavar="RxC", help="Show the target with this block (block targets only).")
def show(name: str, block: str | None) -> None:
    """Print the full description of target NAME (a bundled name or the path of a .toml file)."""
    click.echo(load_target(name, block=block).render())


@command.command("check")
@verbosity_options
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
def check(paths: tuple[str, ...]) -> None:
    """Validate target files (the first problem is reported with its file and key; exit 2)."""
    for p in paths:
        t = read_target_file(p)
        click.echo(f"{p}: ok ({t.name}: {t.pattern}, {t.format})")
