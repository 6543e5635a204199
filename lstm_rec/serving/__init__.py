"""Serving a trained model without Lightning: the Recommender API, the HTTP service and exported scoring steps."""
