"""The run log, between the two sides: the event schema and everything that writes, finds, reads and
folds run logs (the writer, the reader, the registry of live runs, the fold into a run state, the
ranks of a torchrun job). It imports neither the training side nor a view: both depend on it."""
