"""Roofline simulator: hardware and model catalogs, cost model, and the simulated executor."""
