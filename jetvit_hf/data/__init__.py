"""Data: images for distillation and evaluation (`images`), and procedural scenes with exact depth and labels from
the batched renderer (`render`, with `render_layouts`, `render_textures` and `render_stream` for seed splits, streams
of batches and `datasets` exports)."""
