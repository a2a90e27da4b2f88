"""Work spread over processes, results in input order: the scoring and tokenizing of large data files.

``ordered_map`` gives each worker process its own pipe and at most one task at a time, so no lock is shared
between processes: a worker killed at any moment (the whole process group gets Ctrl-C or SIGTERM, or one is
killed by the system) cannot leave the others or the parent waiting on a lock it held, as a
``multiprocessing.Pool`` can. The workers ignore SIGINT and SIGTERM: the parent decides, and on any error or
signal of its own (``files.interrupted_by_signals``) it kills them before the error goes on. A worker whose
parent is gone finds its pipe closed and ends.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class WorkerFailed(RuntimeError):
    """A worker process ended without sending its result (killed by the system, e.g. out of memory)."""


def ordered_map(function: Callable[[Any], Any], tasks: Iterable[Any], workers: int,
                initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Iterator[Any]:
    """``function(task)`` for every task, computed in ``workers`` processes, yielded in the order of ``tasks``.
    ``function`` and its results must pickle; an exception it raises is raised here."""
    context = multiprocessing.get_context()
    forked = context.get_start_method() == "fork"
    started = []
    try:
        for _ in range(workers):
            parent_end, child_end = context.Pipe()
            # a forked worker holds copies of the parent's ends of the pipes so far, its own included: it closes
            # them, so that each pipe closes when the parent is gone
            parent_ends = [connection for _, connection in started] + [parent_end] if forked else []
            process = context.Process(target=_serve, args=(child_end, function, initializer, initargs, parent_ends),
                                      daemon=True)
            with _signals_held():  # until the worker ignores them: none may reach it with the parent's handler
                process.start()
                started.append((process, parent_end))  # before a held signal is delivered: it is killed then
            child_end.close()
        yield from _in_order(iter(tasks), started)
    finally:
        for process, connection in started:
            if process.is_alive():
                process.kill()
            process.join()
            connection.close()


def _in_order(tasks: Iterator[Any], started: list) -> Iterator[Any]:
    """Task ``i`` goes to worker ``i % n``; its result is read before that worker gets its next task (which is
    taken from ``tasks`` while the worker still computes)."""
    busy = []
    for (process, connection), task in zip(started, tasks):
        connection.send(task)
        busy.append((process, connection))
    index = 0
    while busy:
        following = next(tasks, _DONE)
        process, connection = busy[index]
        result = _receive(process, connection)
        if following is _DONE:
            busy.pop(index)
        else:
            connection.send(following)  # the worker starts on it while the caller uses this result
            index += 1
        index = index % len(busy) if busy else 0
        yield result


_DONE = object()


def _receive(process, connection) -> Any:
    try:
        ok, value = connection.recv()
    except EOFError:
        process.join()
        raise WorkerFailed(f"a worker process ended unexpectedly (exit code {process.exitcode})") from None
    if not ok:
        raise value
    return value


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back (blocked) while inside; one that came meanwhile is delivered on leaving. A
    process started inside is born with them blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _serve(connection, function, initializer, initargs, parent_ends) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held back since the start (``_signals_held``)
    for inherited in parent_ends:
        inherited.close()
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            task = connection.recv()
        except EOFError:  # the parent is gone, or done
            return
        try:
            reply = (True, function(task))
        except Exception as error:  # noqa: BLE001 (raised again in the parent)
            reply = (False, error)
        try:
            connection.send(reply)
        except (BrokenPipeError, EOFError):
            return
        except Exception as error:  # noqa: BLE001 (an exception that does not pickle)
            connection.send((False, RuntimeError(f"{type(error).__name__}: {error}")))
