"""The `onnxprune` command line: a thin layer over the Python API.

Each command lives in its own module here and is registered below. Commands parse options,
build the same objects the Python API uses, print, and return an exit code:
0 success, 1 parity failed, 2 usage or input error (one line on stderr, naming options as flags;
`run` names them as recipe keys).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata

import click

from onnxprune import __version__
from onnxprune.core.atomic import undo_on_error
from onnxprune.core.errors import OnnxPruneError, Opt, OptionError, recipe_key
from onnxprune.core.progress import configure

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
    "sensitivity": "sensitivity_cmd",
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


_VERBOSITY = "onnxprune.verbosity"  # ctx.meta key: -1 quiet, 0 default, 1 verbose


def _set_verbosity(ctx: click.Context, param: click.Parameter, value) -> None:
    if value:  # given here: it overrides the group's (`onnxprune -q prune ...`)
        ctx.meta[_VERBOSITY] = -1 if param.name == "quiet" else int(value)
        configure(ctx.meta[_VERBOSITY])


def verbosity_options(f):
    """-q/--quiet and -v/--verbose, the same on the group and on every command."""
    f = click.option("-v", "--verbose", count=True, expose_value=False, callback=_set_verbosity,
                     help="More detail: a log line per layer, batch and sweep point.")(f)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_verbosity,
                        help="Only errors, warnings and the one-line result: no tables, stage lines or bars.")(f)


def is_quiet() -> bool:
    """Was -q given (to the group or the running command)?"""
    return click.get_current_context().meta.get(_VERBOSITY, 0) < 0


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the JSON report on stdout (as --report -); tables go to stderr.")


def print_job(result, report_path: str | None) -> None:
    """Print a job's tables and summary line (stderr when the JSON report goes to stdout) and exit
    with its code (1: parity failed)."""
    text = result.render(quiet=is_quiet())
    if text:
        click.echo(text, err=report_path == "-")
    if result.exit_code:
        click.get_current_context().exit(result.exit_code)


def report_target(report_path: str | None, as_json: bool) -> str | None:
    """Where the JSON report goes: --report PATH, or stdout ('-') with --json."""
    if as_json and report_path not in (None, "-"):
        raise OptionError("give --report PATH or --json (the report on stdout), not both")
    return "-" if as_json else report_path


class SectionedCommand(click.Command):
    """A command whose --help lists its options in named sections (`sections`: title -> parameter names;
    the rest under "Other options") and ends with `epilog` examples kept as written."""

    def __init__(self, *args, sections: dict[str, tuple[str, ...]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sections = sections or {}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        help_option = self.get_help_option(ctx)
        records = {"help" if p is help_option else p.name: p.get_help_record(ctx)
                   for p in self.get_params(ctx) if isinstance(p, click.Option)}
        records = {k: v for k, v in records.items() if v is not None}
        shown: set[str] = set()
        for title, names in [*self.sections.items(), ("Other options", tuple(records))]:
            rows = [records[n] for n in names if n in records and n not in shown]
            shown |= set(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.epilog:
            formatter.write_paragraph()
            formatter.write_text("Examples:")
            for line in self.epilog.strip("\n").splitlines():
                formatter.write(f"  {line}\n")


def _return_freed_memory() -> None:
    """Have glibc give every block of 4 MiB and up its own mapping, unmapped when freed. By default
    its threshold follows the largest block freed so far (up to 32 MiB), so weight-sized
    temporaries end up in the heap, between the weights a job keeps, and their holes stay resident:
    tens of MiB at the peak of a large model. The heap keeps up to 8 MiB free at its top (as
    glibc does once its threshold moved), so the chunk-sized temporaries of the kernels are reused,
    not faulted in afresh each time. Other C libraries: nothing changes."""
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(m_mmap_threshold, 4 << 20)
        libc.mallopt(m_trim_threshold, 8 << 20)
    except (OSError, AttributeError):  # not glibc (no mallopt), or no C library to load
        pass


class _Group(click.Group):
    """Loads commands lazily, lists each with its full summary, and turns OnnxPruneError into one stderr
    line + its exit code."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            help_text = self.get_command(ctx, name).help or ""
            rows.append((name, " ".join(help_text.split("\n\n")[0].split())))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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
@verbosity_options
@click.pass_context
def main(ctx: click.Context) -> None:
    """Prune, repair, pack and check ONNX models for edge deployment.

    Progress goes to stderr: a bar per long stage on a terminal, one line per stage otherwise
    (-q: none, -v: one per layer). Shell completion: see the README (_ONNXPRUNE_COMPLETE)."""
    _return_freed_memory()
    configure(ctx.meta.get(_VERBOSITY, 0))
