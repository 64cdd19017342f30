"""MetaPortrait in JAX/Flax: identity-preserving talking heads with fast personalised adaptation."""

__version__ = "0.1.0"
