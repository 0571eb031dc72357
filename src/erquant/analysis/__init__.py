"""Dose-response analysis."""
