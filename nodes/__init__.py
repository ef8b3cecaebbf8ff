"""The pack's Python code. Imports nothing, so nodes.core loads without ComfyUI."""
