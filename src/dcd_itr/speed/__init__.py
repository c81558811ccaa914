"""The speed/quality benchmark behind ``dcd bench`` and ``benchmarks/speed.py``: one run, one machine, ratios.

Four parts, each in its own module, all written side by side by :func:`dcd_itr.speed.runner.run_benchmark`:

1. :mod:`~dcd_itr.speed.ranking` -- full ranking of a split from raw images and captions (towers included, each
   tower view run once per item) by the fusion teacher, the compressed cross-encoder student, the dual student
   and the dual -> cross cascade; wall time split into image encoding, text encoding and scoring, RSUM from the
   same run's scores.
2. :mod:`~dcd_itr.speed.projection` -- pairs/s of full-size ViLT-B/32 and BLIP-ITM base with random weights
   (timing only), and every system's projected time to rank COCO-5K and Flickr30K-1K from measured rates.
3. :mod:`~dcd_itr.speed.latency` -- one text query at a time: query encoding, then FAISS exact / HNSW / IVF-PQ
   search over synthetic galleries of 10K to 1M unit vectors; p50/p99, ANN recall@10, bytes per vector.
4. :mod:`~dcd_itr.speed.tables` -- ``speed.json``, ``speed.md`` (the README's tables) and ``speed_plot.png``.

Shared helpers (threads, clocks, percentiles, the machine record) live in :mod:`~dcd_itr.speed.common`.
Every timing uses ``torch.inference_mode`` and the same thread count (torch and FAISS), set once per run.
"""
