"""Test-only fault injection: makes a fit test fail on purpose, so the benchmark's handling of crashes, kills,
out-of-memory errors and hangs can be tested without a machine that fails (``YOUR_AI_FIT_TEST_FAULT``)."""

from __future__ import annotations

import os
import signal
import sys
import time

from your_ai.fit.plan import FitConfig

FAULT_ENV = "YOUR_AI_FIT_TEST_FAULT"
FAULT_KINDS = ("segfault", "sigkill", "oom", "metal-oom", "metal-abort", "error", "exit", "sleep")
METAL_OUT_OF_MEMORY = ("[METAL] Command buffer execution failed: Insufficient Memory "
                       "(00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)")


def injected_fault(model: str, config: FitConfig, environ=os.environ) -> str | None:
    """The test-only fault ``YOUR_AI_FIT_TEST_FAULT`` asks for in this fit test, if any.

    The value is a comma-separated list of ``FAULT`` or ``FAULT@SELECTOR``; the first entry
    whose selector matches applies. FAULT: ``segfault`` (die by SIGSEGV), ``sigkill`` (die by
    SIGKILL, as the OS out-of-memory killer does), ``oom`` (raise ``torch.OutOfMemoryError``),
    ``metal-oom`` (raise MLX's ``RuntimeError`` for a failed Metal allocation), ``metal-abort`` (write
    Metal's out-of-memory message to stderr and abort, as MLX does when a command buffer fails),
    ``error`` (raise ``RuntimeError``), ``exit:CODE`` (write to stderr and exit without a result
    line), ``sleep:SECONDS`` (hang). SELECTOR: the model name as
    given, or ``batch=N`` / ``rank=N`` / ``layers=N`` (the requested values), or ``process=N``
    (only the process of that rank in a fit test on several processes, ``--gpus``).
    """
    spec = environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    for entry in spec.split(","):
        entry = entry.strip()
        fault, _, selector = entry.partition("@")
        kind, _, argument = fault.partition(":")
        if kind not in FAULT_KINDS or (kind in ("sleep", "exit")) != bool(argument):
            raise ValueError(
                f"{FAULT_ENV}={spec!r}: entry {entry!r} is not one of segfault, sigkill, oom, metal-oom, "
                f"metal-abort, error, exit:CODE, "
                f"sleep:SECONDS (optionally @MODEL or @batch=N / @rank=N / @layers=N / @process=N)"
            )
        try:
            float(argument) if kind == "sleep" else int(argument) if kind == "exit" else None
        except ValueError:
            raise ValueError(f"{FAULT_ENV}={spec!r}: {kind} needs a number, got {argument!r}") from None
        if _selector_matches(selector, model, config, spec, environ):
            return fault
    return None


def _selector_matches(selector: str, model: str, config: FitConfig, spec: str, environ=os.environ) -> bool:
    if not selector:
        return True
    key, equals, value = selector.partition("=")
    if not equals:
        return selector == model
    fields = {"batch": config.batch_size, "rank": config.lora_rank, "layers": config.lora_layers,
              "process": int(environ.get("RANK") or 0)}
    if key not in fields or not value.isdigit():
        raise ValueError(f"{FAULT_ENV}={spec!r}: selector {selector!r} must be a model name or batch=N, rank=N, "
                         f"layers=N, process=N")
    return fields[key] == int(value)


def trigger_fault(fault: str) -> None:
    """Fail the way ``fault`` says (see ``injected_fault``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    kind, _, argument = fault.partition(":")
    if kind == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "oom":
        import torch

        raise torch.OutOfMemoryError(f"out of memory ({FAULT_ENV}={fault}, injected for testing)")
    elif kind == "metal-oom":
        raise RuntimeError(f"[metal::malloc] Attempting to allocate 68719476736 bytes which is greater than the "
                           f"maximum allowed buffer size ({FAULT_ENV}={fault}, injected for testing)")
    elif kind == "metal-abort":
        print(f"libc++abi: terminating due to uncaught exception of type std::runtime_error: {METAL_OUT_OF_MEMORY}",
              file=sys.stderr, flush=True)
        os.abort()
    elif kind == "error":
        raise RuntimeError(f"injected failure ({FAULT_ENV}={fault}, for testing)")
    elif kind == "exit":
        print(f"injected exit with code {argument} ({FAULT_ENV}, for testing)", file=sys.stderr, flush=True)
        os._exit(int(argument))
    elif kind == "sleep":
        time.sleep(float(argument))

