"""Serving: predictions on the KServe v1 protocol, features on Feast's, a durable prediction log, access control."""
