"""The Gradio web app: one module per tab, the session state and launch (no torch: it calls engine and training)."""
