"""Diffusion decoders in JAX: UNets, VAE, vocoder, noise schedulers and sampling pipelines."""
