"""The ``your-ai`` command line: each command parses its flags and calls one library function."""

from __future__ import annotations

import atexit
import os
import signal
import threading

import click

from your_ai import __version__
from your_ai.errors import RECOGNISED, user_message

DEBUG_ENV = "YOUR_AI_DEBUG"


class _ErrorLines:
    """Shows each user-caused error (``errors.user_message``) once, as one ``Error:`` line. An error in a thread
    (a writer thread, whose error the command usually raises again) waits for the end of the process, and is
    shown then only if the command did not show it."""

    def __init__(self) -> None:
        self.debug = False  # --debug: every error keeps its traceback
        self._shown: list[BaseException] = []
        self._from_threads: list[BaseException] = []
        self._thread_hook = threading.excepthook

    def install(self, debug: bool) -> None:
        self.debug = debug
        if threading.excepthook != self.thread_error:
            threading.excepthook = self.thread_error
            atexit.register(self.show_thread_errors)

    def show(self, error: BaseException) -> int | None:
        """Print ``error``'s line unless it (or an error it came from) was shown; its exit code, or None for
        an error that is not the user's (a bug) or under --debug."""
        shown = None if self.debug else user_message(error)
        if shown is None:
            return None
        chain, link = [], error
        while link is not None and link not in chain:
            chain.append(link)
            link = link.__cause__ or link.__context__
        if not any(link is done for link in chain for done in self._shown):
            click.echo(f"Error: {shown[0]}", err=True)
        self._shown.extend(chain)
        return shown[1]

    def thread_error(self, args) -> None:
        """``threading.excepthook``: a user-caused error kept for ``show_thread_errors``, anything else as usual."""
        if self.debug or args.exc_value is None or user_message(args.exc_value) is None:
            self._thread_hook(args)
        else:
            self._from_threads.append(args.exc_value)

    def show_thread_errors(self) -> None:
        """At exit (after the threads ended): the thread errors the command did not show."""
        for error in self._from_threads:
            self.show(error)


_errors = _ErrorLines()


class _Commands(click.Group):
    """The one place where errors reach the user: a user-caused error ends the command with one ``Error:``
    line and its exit code; any other error, and every error under --debug, shows its traceback. Ctrl-C
    ends it with one line and exit code 130 (128 + the signal), as a shell expects."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RECOGNISED as error:
            code = _errors.show(error)
            if code is None:
                raise
            ctx.exit(code)
        except KeyboardInterrupt as stop:  # Ctrl-C where a command does not stop on its own terms (generate, ...)
            signum = getattr(stop, "signum", signal.SIGINT)
            click.echo(f"Stopped by {signal.Signals(signum).name}.", err=True)
            ctx.exit(128 + signum)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="your-ai")
@click.option("--debug", is_flag=True, envvar=DEBUG_ENV,
              help=f"Show the full traceback of an error instead of its one-line message (or set {DEBUG_ENV}=1).")
def main(debug: bool) -> None:
    """Fine-tune open LLMs with LoRA under the Empirical Distrust objective,
    and find out empirically which models and settings fit your hardware."""
    _errors.install(debug)
    if debug:  # processes this command starts (torchrun, fit tests) show theirs too
        os.environ[DEBUG_ENV] = "1"
    # Loading and saving weights would draw per-shard progress bars; the commands report their own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from your_ai.model.quantize import quiet_torchao_import

    quiet_torchao_import()


from your_ai.cli import data, eval, fit, train  # noqa: E402  (each defines its commands)

for _module, _names in ((fit, ("setup", "recommend", "benchmark", "optimize")),
                        (data, ("download", "prepare", "deduplicate", "analyze", "score")),
                        (train, ("train",)),
                        (eval, ("generate", "evaluate", "export", "validate"))):
    for _name in _names:
        main.add_command(getattr(_module, _name))
