"""Diffusion math: schedules, training loss, samplers and guidance. Pure torch."""
