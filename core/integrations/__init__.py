"""Gradient balancing inside other libraries' training loops.

One module per library, each importing its library at module level (the optional extras
``jointtrain[lightning]`` and ``jointtrain[hf]``): import the one you use,
``core.integrations.lightning`` or ``core.integrations.hf``. Nothing in ``core`` imports them,
so ``import core`` still needs torch alone. Both run a :class:`core.balancing.LoopBalancer` (the
functional API) where the library would call ``loss.backward()``, and leave the rest of the
library's step (optimizer, scheduler, clipping, AMP scaler, logging) untouched.
"""
