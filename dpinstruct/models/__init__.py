"""Models: loading the generator and the embedder, LoRA adapters, and the fast nucleus sampler."""
