"""Sample-quality metrics through torch-fidelity."""
