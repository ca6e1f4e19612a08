"""UnZipLoRA farm: train a catalogue across ComfyUI workers with Ray. Not imported by the pack."""
