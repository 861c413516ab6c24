"""The GPU truth kit: one prepared script that checks ftwatch's CUDA numbers on a real card.

Run it through ``scripts/gpu-check.sh`` (``--dry-run`` on a CPU); see docs/gpu-kit.md.
"""
