"""latentlab: latent memory and latent reasoning with language models.

Subpackages: ``data`` (schemas, converters, synthetic sets), ``memory`` (compressor, index, QA),
``reasoning`` (continuous thoughts, CVAE, RL), ``eval`` (metrics, reports).
"""

__version__ = "0.1.0"
