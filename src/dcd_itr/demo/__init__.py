"""The demo pipeline (`dcd demo`) and what it writes for a person to read.

- :mod:`~dcd_itr.demo.pipeline` -- :func:`demo`, one function per stage: data, preview, features, training,
  evaluate + speed, index, example queries, report.
- :mod:`~dcd_itr.demo.plan` -- :class:`DemoPlan`: what the demo runs (views, configs, benchmark settings).
- :mod:`~dcd_itr.demo.ledger` -- the stage ledger: a stage is reused when the fingerprint of its inputs
  (configs, checkpoint hashes, data and feature-cache fingerprints) equals the one recorded when it last finished
  and its outputs are intact; otherwise it is recomputed (after clearing outputs of other inputs).
- :mod:`~dcd_itr.demo.examples` -- a contact sheet of example text queries with each system's top images.
- :mod:`~dcd_itr.demo.environment` -- package versions and the machine's description.
- :mod:`~dcd_itr.demo.report` -- the summary table and ``report.md``.
"""

from dcd_itr.demo.pipeline import demo
from dcd_itr.demo.plan import DemoPlan

__all__ = ["DemoPlan", "demo"]
