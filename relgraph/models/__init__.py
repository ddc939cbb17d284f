"""Models: import from torch.nn and the shipped demo models."""
