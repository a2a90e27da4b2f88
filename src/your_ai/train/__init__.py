"""LoRA training under the Empirical Distrust objective.

The package has two halves, with a seam between them.

What to train (no model is loaded and no tensor made; PyTorch is imported only by the objective's
maths; another engine can take it as it is):

* ``args``: ``TrainingArgs``, its validation, its defaults (``defaults`` is the one source of them, for
  the CLI's help too) and the merge of a resumed run's settings;
* ``plan``: the run plan (``plan_run``: output directory, the checkpoint a resumed run continues), the
  ``Objective``, and the run's data (``read_run_data``: read, checked, scored; ``RunData.tokenize``);
* ``outputs``: the output directory's layout, what an earlier run left there, where to resume;
* ``run``: what a run is whichever engine runs it (``Progress``, ``TrainResult``, the stop on a signal);
* ``report``: the metrics window, the reporter, the printed plan;
* ``sinks``: where the records go (``--report-to``): the metrics JSONL, TensorBoard, wandb, trackio;
* ``step.MicroBatch``'s contents and the schedule (warm-up and cosine decay over ``--max-steps``) are
  described by the args.

How it runs (PyTorch):

* ``setup``: the model loaded for training with LoRA (``load_for_training``), the step mode applied
  (``apply_step_mode``), the optimizer;
* ``loss``: one forward pass to the objective's parts (``compute_loss``; ``StepLoss`` as a module), and
  ``evaluate``;
* ``step``: the one optimizer step (``optimizer_step``), which the fit test times too;
* ``parallel``: the ``Strategy`` for one process, DDP or FSDP (wrapping, loading, reducing, gathering,
  which process writes); ``launch`` starts the processes;
* ``checkpointer``: the ``Checkpointer`` that writes checkpoints, best/ and the final adapter, and resumes
  (``checkpoints`` reads and writes the files);
* ``loop``: ``train``, which wires these together and runs the loop; with ``--engine mlx`` it hands the
  planned run to ``your_ai.mlx_engine`` (imported only then), which runs it in MLX.
"""
