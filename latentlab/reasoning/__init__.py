"""Latent reasoning: continuous thoughts, curriculum, CVAE latent steps, RL on latent chains."""
