"""ComfyUI side of the pack: thin V3 nodes (one module per capability) and shared host plumbing."""
