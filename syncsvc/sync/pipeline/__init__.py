"""The page pipeline: fetched pages decoded, guarded, canonicalised and group-written.

A pull sees only :class:`syncsvc.sync.pipeline.sink.PageSink` (one per process, held by the
sync context) and the :class:`~syncsvc.sync.pipeline.sink.TypePages` it opens per type. Behind
them: page-decoding worker processes over socket pairs (``decode``), the compartment guard and
canonical bytes (``compartment``, ``prepare``), comparison with what is stored (``store``), and
group commit with per-dialect statements (``writer``, ``batch``).

Nothing is imported here: a page-decoding process imports ``decode`` alone.
"""
