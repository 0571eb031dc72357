"""Learned models shipped with erquant (inference only; training: erquant.models.train)."""
