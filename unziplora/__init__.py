"""UnZipLoRA as pure PyTorch on ComfyUI's SDXL UNet: dual LoRA layers, the three-stream K/V patch,
column masks + Cone scores, block roles and file formats. No node classes here."""
