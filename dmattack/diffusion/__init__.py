"""Diffusion maths (docs/architecture.md): the Gaussian diffusion and respacing (``gaussian``),
reverse samplers and the chain object (``sampling``), trajectory perturbations
(``perturbation``)."""
