"""Diffusion math, pure torch: schedules, objectives (eps / v), training loss, posterior, samplers, guidance and
the variational bound."""
