"""Training-side measurement: tensor accounting, device samplers and the Trainer callback."""
