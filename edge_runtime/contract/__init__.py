"""What `train/`, `export/` and `server/` may import from `edge_runtime`: numpy-only pieces
shared by training, export and the device (errors, event decoding, window stitching, the
model card, the log-mel front end, the interpreter wrapper, WAV, Raven tables, metrics and
time formatting). Nothing here imports the rest of `edge_runtime`."""
