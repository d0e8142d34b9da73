"""RL on reasoning: policy losses, group advantages, rewards (rollouts and the training module come next)."""
