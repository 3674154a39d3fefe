"""Triton kernels of fastgan, installed as ``fastgan.kernels`` (imported only when the Triton backend is selected)."""
