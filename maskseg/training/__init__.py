"""Training and evaluation: datasets, synthetic shapes, the train loop and COCO metrics (no Gradio)."""
