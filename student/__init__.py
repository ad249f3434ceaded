"""Student stage: the open_clip-based student, its losses, the accelerate training loop and inference."""
