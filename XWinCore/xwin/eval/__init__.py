"""Evaluation of world models."""
