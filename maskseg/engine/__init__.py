"""The engine: image in -> Segmenter -> Prediction -> overlay and files (no Gradio, no training)."""
