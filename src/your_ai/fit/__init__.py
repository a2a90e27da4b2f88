"""What fits this machine: fit tests (short real training runs, one per subprocess) and what is built on them.

- ``plan``: what a fit test runs (``FitConfig``), the request for one (``FitTest``) and the analytic
  estimates it is planned with;
- ``result``: the typed result (``FitResult``), its one result line and how it reads;
- ``child``: the fit test itself, in this process, through ``train``'s own loading and optimizer step;
- ``faults``, ``watchdog``: test-only fault injection, and the child ending when its parent is gone;
- ``runner``: a fit test in a subprocess, stopped by signals or a timeout, its end classified;
- ``progress``: the live lines and the JSONL event log;
- ``benchmark``: which models fit; ``sweep``: the fastest config of one model, saved as a hardware profile
  (``profiles``) that ``train --profile`` applies; ``recommend``: the estimate alone, nothing run.
"""
