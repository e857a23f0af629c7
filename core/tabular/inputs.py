"""The fitted schema as a module: numeric statistics as buffers, one embedding table for all categories."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .schema import RESERVED, TabularSchema


class TabularInputs(nn.Module):
    """Numeric imputation/indicator/winsorising/standardisation as buffers, and category embeddings."""

    def __init__(self, schema: TabularSchema, embedding_dim: int) -> None:
        super().__init__()
        self.schema = schema
        stats = torch.tensor(
            [[c.median, c.lo, c.hi, c.mean, c.std, c.log] for c in schema.numeric], dtype=torch.float32
        ).reshape(-1, 6)
        for i, key in enumerate(("median", "lo", "hi", "mean", "std")):
            self.register_buffer(key, stats[:, i].clone())
        self.register_buffer("log", stats[:, 5].bool())
        # piecewise-linear encoding (Gorishniy et al. 2022): bin t of a value is 0 below it, 1 above
        # it, linear inside; lets an MLP express the lab-value thresholds that trees find easily
        self.n_bins = max((max(len(c.edges) - 1, 0) for c in schema.numeric), default=0)
        left = torch.zeros(len(schema.numeric), self.n_bins)
        width = torch.ones(len(schema.numeric), self.n_bins)
        valid = torch.zeros(len(schema.numeric), self.n_bins)
        centre = torch.zeros(len(schema.numeric), self.n_bins)
        for i, c in enumerate(schema.numeric):
            e = torch.tensor(c.edges, dtype=torch.float32)
            k = len(c.edges) - 1
            if k > 0:
                left[i, :k], width[i, :k], valid[i, :k] = e[:-1], (e[1:] - e[:-1]).clamp_min(1e-12), 1.0
                centre[i, : len(c.bin_means)] = torch.tensor(c.bin_means, dtype=torch.float32)
        self.register_buffer("bin_left", left)
        self.register_buffer("bin_width", width)
        self.register_buffer("bin_valid", valid)
        self.register_buffer("bin_centre", centre, persistent=False)  # from the schema JSON, as the edges
        sizes = [RESERVED + len(c.vocab) for c in schema.categorical]
        offsets = torch.tensor([0, *np.cumsum(sizes)[:-1].tolist()] if sizes else [], dtype=torch.long)
        self.register_buffer("offsets", offsets)
        self.embedding = nn.Embedding(max(sum(sizes), 1), embedding_dim)
        self.n_numeric, self.n_categorical, self.embedding_dim = len(schema.numeric), len(sizes), embedding_dim

    def numeric(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Standardised values [B, Cn], missing indicators [B, Cn], piecewise-linear bins [B, Cn, n_bins]."""
        x = x.float()
        missing = torch.isnan(x)
        x = torch.where(missing, self.median, x)
        x = torch.minimum(torch.maximum(x, self.lo), self.hi)
        bins = (((x.unsqueeze(-1) - self.bin_left) / self.bin_width).clamp(0, 1) - self.bin_centre) * self.bin_valid
        x = torch.where(self.log, torch.log1p(x.clamp_min(0)), x)
        return (x - self.mean) / self.std, missing.float(), bins

    def categorical(self, codes: Tensor) -> Tensor:
        """Embeddings [B, Cc, embedding_dim]."""
        return self.embedding(codes.long() + self.offsets)
