"""The training side: what runs inside the training process (the worker, the probe and its
samplers, pre-flight, the live forecast, data loading, the checks made before a run starts) and
writes the run log. It imports no view and never textual."""
