"""Transformers with named intervention sites."""

from models.sites import Hook, Site, SiteInfo, SiteModelMixin, UnknownSiteError
from models.transformer import Transformer, TransformerConfig

__all__ = ["Hook", "Site", "SiteInfo", "SiteModelMixin", "UnknownSiteError", "Transformer", "TransformerConfig"]
