"""Scale-out: `predict --engine ray` runs the same Segmenter in a Ray Data actor pool."""
