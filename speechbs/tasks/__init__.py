"""Tasks: what differs between pretraining and fine-tuning, one module per task.

A task (:class:`speechbs.tasks.base.Task`) gives the shared training loop the model,
how a micro-batch becomes a loss sum and a number of targets, which metrics a step
logs, how the validation set is scored, and the loader hooks its data needs. The batch
plan, the step engine, schedules, checkpoints and accounting are the loop's, the same
for every task. :mod:`speechbs.tasks.ssl` is self-supervised pretraining (wav2vec 2.0,
HuBERT, WavLM); :mod:`speechbs.tasks.ctc` is CTC fine-tuning on letters.
"""
