"""The data's longest batch, before training: token lengths of the data file and the sample order.

:func:`scan_lengths` tokenizes the data file as :func:`~ftwatch.training.data.build_dataset` does
(the run's own tokenizer, no special tokens) and keeps only the lengths, with a progress line on
stderr when it takes over a second. :func:`sample_order` reproduces the order the Trainer draws the
examples in (accelerate's seeded sampler), or says it cannot. :mod:`.longest_batch` prices them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from ftwatch.common.config import Config
from ftwatch.training.data import iter_numbered_texts

#: Texts tokenized at a time (a progress line between chunks).
CHUNK = 512
#: A scan longer than this (seconds) shows its progress on stderr.
PROGRESS_AFTER_S = 1.0


@dataclass
class LengthScan:
    """The token lengths of a data file's examples, as the run will see them.

    Without packing, one entry per example (texts that tokenize to nothing are dropped, as
    :func:`build_dataset` drops them): ``lengths`` untruncated, ``where`` its place in the file.
    With packing, ``blocks`` is the number of ``max_length`` blocks and ``lengths`` the texts'.
    """

    packing: bool
    max_length: int
    lengths: list[int]
    where: list[str]
    blocks: int = 0
    seconds: float = 0.0

    @property
    def examples(self) -> int:
        """How many training examples the data set holds."""
        return self.blocks if self.packing else len(self.lengths)

    def seq_len(self, index: int) -> int:
        """Example ``index``'s length in the batch: its tokens, cut to ``max_length``."""
        return min(self.lengths[index], self.max_length)


def load_tokenizer(cfg: Config) -> Any:
    """The tokenizer the worker loads (``[model] name``); no weights."""
    from transformers import AutoTokenizer

    from ftwatch.analysis.estimate.quiet import _quiet

    with _quiet():
        return AutoTokenizer.from_pretrained(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)


def scan_lengths(cfg: Config, tokenizer: Any = None, progress: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> LengthScan:
    """Tokenize ``[data]`` and return its lengths. Raises ``ConfigError`` for a bad data file.

    ``progress``: where the progress line goes (default stderr) once the scan takes over
    :data:`PROGRESS_AFTER_S`; ``clock`` is injectable for tests.
    """
    assert cfg.data is not None
    data = cfg.data
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
    out = progress if progress is not None else sys.stderr
    size = max(data.path.stat().st_size, 1)
    start = clock()
    lengths: list[int] = []
    where: list[str] = []
    shown = False
    chunk: list[tuple[str, str]] = []
    texts = iter_numbered_texts(data, cfg.path)
    done = False
    while not done:
        chunk = [item for _, item in zip(range(CHUNK), texts, strict=False)]
        done = len(chunk) < CHUNK
        if chunk:
            encoded = tokenizer([text for _, text in chunk], add_special_tokens=False)["input_ids"]
            for (place, _text), ids in zip(chunk, encoded, strict=True):
                lengths.append(len(ids))
                where.append(place)
        if clock() - start > PROGRESS_AFTER_S:
            shown = True
            read = _bytes_read(texts)
            out.write(f"\rscanning {data.path.name}: {len(lengths)} texts"
                      + (f" ({min(read / size, 1):.0%})" if read else "") + " ")
            out.flush()
    if shown:
        out.write("\n")
        out.flush()
    seconds = clock() - start
    if data.packing:
        eos = 1 if tokenizer.eos_token_id is not None else 0
        stream = sum(n + eos for n in lengths)
        return LengthScan(True, data.max_length, lengths, where, blocks=stream // data.max_length,
                          seconds=seconds)
    kept = [(n, w) for n, w in zip(lengths, where, strict=True) if n]
    return LengthScan(False, data.max_length, [n for n, _ in kept], [w for _, w in kept], seconds=seconds)


def _bytes_read(texts: Any) -> int:
    """How far the reading got, when the generator's file is at hand (best effort: 0 otherwise)."""
    frame = getattr(texts, "gi_frame", None)
    handle = frame.f_locals.get("handle") if frame is not None else None
    try:
        return int(handle.tell()) if handle is not None and not handle.closed else 0
    except (OSError, ValueError):
        return 0


def sample_order(cfg: Config, count: int) -> tuple[list[int] | None, str]:
    """The first epoch's example order and how it is known, or ``(None, why not)``.

    A single process with the Trainer's default random sampler draws through accelerate's
    ``SeedableRandomSampler``: ``torch.randperm(count)`` from a generator seeded with ``data_seed``
    (else ``seed``). Any other sampler (``group_by_length``, several processes, an unseeded
    sampler) is reported as shuffled, never guessed.
    """
    training = cfg.training
    if groups_by_length(cfg):
        return None, "the order is grouped by length"
    if str(training.get("train_sampling_strategy", "random")) != "random":
        return None, "the order is shuffled (a sampler ftwatch does not reproduce)"
    if cfg.launch.world_size > 1:
        return None, "the order is shuffled (several processes share the data)"
    accel = training.get("accelerator_config") or {}
    if isinstance(accel, dict) and accel.get("use_seedable_sampler") is False:
        return None, "the order is shuffled (use_seedable_sampler = false)"
    seed = training.get("data_seed")
    if seed is None:
        seed = training.get("seed", 42)
    import torch

    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return torch.randperm(count, generator=generator).tolist(), f"seeded sampler, seed {int(seed)}"


def groups_by_length(cfg: Config) -> bool:
    """Whether the Trainer samples with ``LengthGroupedSampler`` (it puts the longest example first)."""
    training = cfg.training
    return bool(training.get("group_by_length")) or str(training.get("train_sampling_strategy")) == "group_by_length"
