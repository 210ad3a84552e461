"""Sequential backbones behind one interface (see base.py); pick one by name with `build_backbone`."""

from trainer.backbones import bert4rec, graph, gru4rec, sasrec  # noqa: F401,E402  (register themselves)
from trainer.backbones.base import BACKBONES, Backbone, build_backbone, gather_at

__all__ = ["BACKBONES", "Backbone", "build_backbone", "gather_at"]
