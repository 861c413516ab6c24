"""The viewing side: everything that shows a run from its log (the Textual dashboard, the headless
report and follower, the exporters). Views read the run log and analysis; they never import torch
and never the training side."""
