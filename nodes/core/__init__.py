"""Host-free core: the function table, image codec, protocol, client, quota, polling and the
emulator. Never imports ComfyUI (tests/test_layering.py enforces it)."""
