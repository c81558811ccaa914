"""Adapters that put Hugging Face image-text matching models behind the :class:`~dcd_itr.interfaces.CrossEncoder`
interface: ViLT, BridgeTower and BLIP-ITM (:mod:`~dcd_itr.models.hf.adapters` is the registry and loader;
:mod:`~dcd_itr.models.hf.base` the shared adapter; one module per model family)."""
