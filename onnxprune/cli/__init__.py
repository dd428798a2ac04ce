"""The `onnxprune` command line: a thin layer over the Python API.

Each command lives in its own module here and is registered below. Commands parse options,
build the same objects the Python API uses, print, and return an exit code:
0 success, 1 parity failed, 2 usage or input error (one line on stderr, naming options as flags;
`run` names them as recipe keys).
"""

from __future__ import annotations

import importlib
import importlib.metadata

import click

from onnxprune import __version__
from onnxprune.core.atomic import undo_on_error
from onnxprune.core.errors import OnnxPruneError, Opt, OptionError, recipe_key

# what --version prints: the tool and the two libraries whose versions decide its results
VERSION_MESSAGE = (f"%(prog)s %(version)s (onnx {importlib.metadata.version('onnx')}, "
                   f"onnxruntime {importlib.metadata.version('onnxruntime')})")

# command name -> module under onnxprune.cli that defines a click command called `command`
COMMANDS = {
    "auto": "auto_cmd",
    "inspect": "inspect_cmd",
    "check": "check_cmd",
    "prune": "prune_cmd",
    "sweep": "sweep_cmd",
    "run": "run_cmd",
    "targets": "targets_cmd",
    "pack": "pack_cmd",
}

# flags whose name is not "--" + the recipe key's last part with "-" for "_"
_FLAGS = {"prune.overrides": "--override", "prune.hooks": "--hook", "prune.dt": "--delta-t",
          "data.calibration": "--data", "data.evaluation": "--eval-data", "data.shapes": "--shape",
          "data.int_ranges": "--int-range", "check.enabled": "--check", "check.output_thresholds": "--output-threshold",
          "target.name": "--target", "output.model": "-o", "output.masks": "--masks-out"}


def cli_flag(opt: Opt) -> str:
    """An option as a command-line flag: `--sparsity`, `--data FILE` (a list value: the flag repeated)."""
    flag = _FLAGS.get(opt.key, "--" + opt.name.replace("_", "-"))
    if opt.value is None or opt.value is True:  # True: an on/off flag
        return flag
    return " ".join(f"{flag} {v}" for v in (opt.value if isinstance(opt.value, list) else [opt.value]))


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the JSON report on stdout (as --report -); tables go to stderr.")


def report_target(report_path: str | None, as_json: bool) -> str | None:
    """Where the JSON report goes: --report PATH, or stdout ('-') with --json."""
    if as_json and report_path not in (None, "-"):
        raise OptionError("give --report PATH or --json (the report on stdout), not both")
    return "-" if as_json else report_path


class _Group(click.Group):
    """Loads commands lazily and turns OnnxPruneError into one stderr line + its exit code."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        module = COMMANDS.get(name)
        if module is None:
            return None
        return importlib.import_module(f"onnxprune.cli.{module}").command

    def invoke(self, ctx):
        try:
            with undo_on_error(keep=(click.exceptions.Exit,)):  # a failed command leaves no outputs
                return super().invoke(ctx)
        except OnnxPruneError as e:
            name = recipe_key if ctx.invoked_subcommand == "run" else cli_flag
            click.echo(f"onnxprune: error: {e.render(name)}", err=True)
            ctx.exit(e.exit_code)
        except click.UsageError as e:  # a bad option or argument: one line too, not click's usage block
            where = f"onnxprune {e.ctx.info_name}" if e.ctx is not None and e.ctx.info_name else "onnxprune"
            message = " ".join(e.format_message().split())
            click.echo(f"onnxprune: error: {message} (see '{where} --help')", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxprune", message=VERSION_MESSAGE)
def main() -> None:
    """Prune, repair, pack and check ONNX models for edge deployment."""
