"""txt2img: text to images with latent diffusion, from the command line."""

__version__ = "0.1.0"
