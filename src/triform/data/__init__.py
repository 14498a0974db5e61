"""From text to training batches: corpora, memory-mapped token shards and batch readers.

- :mod:`triform.data.corpus`: :class:`Corpus` (files, folders, globs, JSONL, gzip);
- :mod:`triform.data.tables`: corpora in Parquet, Arrow, ``datasets`` folders and CSV, read
  as a stream (pyarrow: ``pip install 'triform[data]'``);
- :mod:`triform.data.default_corpus`: :func:`default_corpus`, text every Python install has;
- :mod:`triform.data.shards`: :func:`~triform.data.shards.prepare_shards` and
  :class:`~triform.data.shards.ShardSet` (tokenize once, read many times);
- :mod:`triform.data.readers`: batch readers for each objective (imports torch, so import it
  explicitly: ``from triform.data.readers import CausalWindows``);
- :mod:`triform.objectives`: model inputs and targets for each pretraining objective.

This package imports neither torch nor the readers, so worker processes start fast.
"""

from triform.data.corpus import Corpus, cut_text, sentence_starts
from triform.data.default_corpus import default_corpus

__all__ = ["Corpus", "cut_text", "default_corpus", "sentence_starts"]
