"""Run files: a command's options read from a YAML file (``--config FILE``) and shown as one (``--print-config``).

A run file is a mapping of the command's option names to values: the option's parameter name
(``lora_rank``) or its flag's spelling (``lora-rank``). Each value is read as the text of a flag's value
and converted by the option's own type, so a file takes exactly what the flags take. The values become
the command's defaults (click's ``default_map``): an option given on the command line wins over the file,
and the file over every other default. A ``null`` value leaves the option to its default. An unknown key
or a value the option refuses ends the command with one line naming the file and line.
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Any, Callable, NoReturn

import click

from your_ai.errors import UserError

NOT_IN_RUN_FILES = ("config", "print_config", "help")  # options about the run file itself
YAML_NULL = "tag:yaml.org,2002:null"
LINES = "run_file_lines"  # ctx.meta: {parameter name: "path:line"} of the values a run file gave


def fail(message: str) -> NoReturn:
    """End the command with ``Error: message``, exit code 2 (``common.fail`` without its run-file prefix: a
    message about the run file names the file and line itself)."""
    raise UserError(message, exit_code=2)


def read_run_file(ctx: click.Context, param: click.Parameter, path: str | None) -> None:
    """``--config``'s callback (eager: before the other options): the file's values as the command's defaults."""
    if path is not None and not ctx.resilient_parsing:
        ctx.default_map = {**(ctx.default_map or {}), **run_file_values(path, ctx)}


def where_given(message: str) -> str:
    """An error ``message`` that starts with a flag, prefixed with ``path:line`` when the flag's value came
    from a run file (the command line's value would be the one at fault otherwise)."""
    from click.core import ParameterSource

    context = click.get_current_context(silent=True)
    found = re.match(r"--([\w-]+)", message)
    if context is None or found is None or LINES not in context.meta:
        return message
    option = option_names(context.command).get(found.group(1).replace("-", "_"))
    if option is None or context.get_parameter_source(option.name) != ParameterSource.DEFAULT_MAP:
        return message
    where = context.meta[LINES].get(option.name)
    return f"{where}: {message}" if where else message


def run_file_values(path: str, ctx: click.Context) -> dict[str, Any]:
    """The run file at ``path`` as ``{parameter name: value}`` for ``ctx``'s command, each value converted by its
    option's type; a ``UserError`` naming ``path:line`` for YAML that does not parse, an unknown or repeated
    key, or a value the option refuses."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            root = yaml.compose(handle, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        fail(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML ({error.problem or error.context})")
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        fail(f"{path}: cannot be read as a run file ({error})")
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        fail(f"{path}:{root.start_mark.line + 1}: a run file is a mapping of option names to values "
             f"(lora_rank: 16), one a line")
    options, values, lines = option_names(ctx.command), {}, {}
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        option = options.get(str(key).replace("-", "_")) if key is not None else None
        if option is None:
            fail(f"{path}:{line}: {_unknown_key(key, options, ctx.command.name)}")
        if option.name in lines:
            fail(f"{path}:{line}: {key}: given twice (also on line {lines[option.name]})")
        lines[option.name] = line
        if value_node.tag == YAML_NULL:
            continue
        values[option.name] = _converted(option, value_node, ctx, f"{path}:{line}: {key}")
    ctx.meta[LINES] = {name: f"{path}:{line}" for name, line in lines.items()}
    return values


def option_names(command: click.Command) -> dict[str, click.Option]:
    """The keys a run file for ``command`` takes, in snake case: each option's parameter name and its flags'
    names (``--max-seq-length`` and ``--seq-length`` both reach ``max_seq_length``)."""
    names: dict[str, click.Option] = {}
    for option in command.params:
        if isinstance(option, click.Option) and option.name not in NOT_IN_RUN_FILES:
            for name in (option.name, *(flag.lstrip("-").replace("-", "_") for flag in option.opts)):
                names.setdefault(name, option)
    return names


def _unknown_key(key, options: dict[str, click.Option], command: str) -> str:
    if key is None:
        return "a key of a run file is an option name (lora_rank), not a list or mapping"
    close = difflib.get_close_matches(str(key).replace("-", "_"), list(options), n=1)
    hint = f"did you mean {close[0]}?" if close else f"see `your-ai {command} --help` for the options"
    return f"unknown key {str(key)!r} ({hint})"


def _converted(option: click.Option, node, ctx: click.Context, where: str) -> Any:
    """A scalar's text converted as the option's flag would convert it."""
    import yaml

    if not isinstance(node, yaml.ScalarNode):
        kind = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
        fail(f"{where}: expected one value, got a {kind}")
    try:
        return option.type.convert(node.value, option, ctx)
    except click.BadParameter as error:
        fail(f"{where}: {_expected(option.type) or error.message.rstrip('.')}, got {node.value!r}")


def _expected(kind: click.ParamType) -> str | None:
    """What an option of type ``kind`` takes, in words; None where click's own message says it best."""
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        number = "a whole number" if isinstance(kind, click.IntRange) else "a number"
        bounds = [f"{'>' if kind.min_open else '>='} {kind.min:g}" if kind.min is not None else "",
                  f"{'<' if kind.max_open else '<='} {kind.max:g}" if kind.max is not None else ""]
        return f"expected {number} {' and '.join(bound for bound in bounds if bound)}".rstrip()
    if isinstance(kind, click.Choice):
        return f"expected one of {', '.join(map(str, kind.choices))}"
    words = {click.types.BoolParamType: "expected true or false", click.types.IntParamType: "expected a whole number",
             click.types.FloatParamType: "expected a number"}
    return next((said for known, said in words.items() if isinstance(kind, known)), None)


CONFIG_OPTION = click.option(
    "--config", type=click.Path(exists=True, dir_okay=False), is_eager=True, expose_value=False,
    callback=read_run_file, help="Read the options from this run file (YAML, `option_name: value` a line); "
    "options given on the command line win. See docs/run-files.md.")


def run_file_options(function: Callable) -> Callable:
    """``--config`` and ``--print-config`` for a command whose function shows the resolved run file itself
    when it gets ``print_config`` (train: with the defaults the run would take)."""
    function = click.option("--print-config", is_flag=True, help="Print the options as a run file, every "
                            "default filled in, and exit.")(function)
    return CONFIG_OPTION(function)


def printed_run_file_options(function: Callable) -> Callable:
    """``--config`` and ``--print-config`` (the options as click resolved them, printed as a run file)."""

    @functools.wraps(function)
    def command(print_config: bool, **options):
        if not print_config:
            return function(**options)
        from your_ai.train.run_file import settings_text

        current = click.get_current_context().command
        shown = {option.name: options[option.name] for option in current.params if option.name in options}
        click.echo(settings_text(shown, current.name), nl=False)

    return run_file_options(command)
