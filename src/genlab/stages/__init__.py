"""One module per pipeline stage: `run(cfg, ctx)` reads its params section, writes its outputs."""
