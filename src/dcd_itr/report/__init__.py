"""What `dcd demo` writes for a person to read, and how it knows what it can reuse.

- :mod:`~dcd_itr.report.stages` -- the stage ledger: a stage is reused when the fingerprint of its inputs
  (configs, checkpoint hashes, data and feature-cache fingerprints) equals the one recorded when it last finished
  and its outputs are intact; otherwise it is recomputed (after clearing outputs of other inputs).
- :mod:`~dcd_itr.report.examples` -- a contact sheet of example text queries with each system's top images.
- :mod:`~dcd_itr.report.environment` -- package versions and the machine's description.
- :mod:`~dcd_itr.report.demo_report` -- the summary table and ``report.md``.
"""
