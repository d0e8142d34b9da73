"""Latent memory: compressor, losses, prompting, generator, FAISS index and QA pipeline."""
