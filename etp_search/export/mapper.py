"""Mapper stage: batches of preprocessed ECGs and report texts -> L2-normalised vectors."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

from etp_search.models import EtpModel

logger = logging.getLogger(__name__)


class EtpMapper:
    """Encode ECG batches and report texts with one ETP model.

    Report texts repeat a lot (PTB-XL has ~21k records but far fewer distinct reports), so text
    vectors are memoised in a bounded LRU keyed by the exact string.

    Args:
        model: The ETP model, in eval mode.
        device: Where to run it.
        text_cache_size: How many distinct report vectors to keep.
    """

    def __init__(self, model: EtpModel, device: str | torch.device = "cpu", text_cache_size: int = 100_000):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self._text: OrderedDict[str, np.ndarray] = OrderedDict()
        self._max = text_cache_size
        # fp16/bf16 autocast only where it pays: on CUDA. CPU stays fp32 so CPU and GPU stores agree closely.
        self._autocast = self.device.type == "cuda"

    def ecg(self, signals: np.ndarray) -> np.ndarray:
        """L2-normalised ECG vectors of a (n, 12, L) batch."""
        return self.ecg_with_norms(signals)[0]

    @torch.inference_mode()
    def ecg_with_norms(self, signals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(unit vectors (n, D), their norms before normalisation (n,)): unit * norm is the projection
        the linear probe may read (``probe --features``); search uses the unit vectors only."""
        x = torch.from_numpy(np.ascontiguousarray(signals, dtype=np.float32)).to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._autocast):
            z = self.model.encode_ecg(x, normalize=False).float()
        norms = z.norm(dim=-1)
        return torch.nn.functional.normalize(z, dim=-1).cpu().numpy(), norms.cpu().numpy().astype(np.float32)

    def unknown(self, texts: Sequence[str]) -> list[str]:
        """The distinct texts among ``texts`` that are not memoised yet (what ``texts`` would encode)."""
        return [t for t in dict.fromkeys(texts) if t not in self._text]

    @torch.inference_mode()
    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised vectors of ``texts`` (in order). The texts not memoised yet go to the
        report tower in one call, which encodes each distinct one once in length-sorted batches: the
        more new texts one call gets, the less padding (``runner._embed`` defers the reports of
        several batches for that reason)."""
        new = self.unknown(texts)
        if new:
            z = torch.nn.functional.normalize(self.model.encode_text(new).float(), dim=-1).cpu().numpy()
            for t, v in zip(new, z):
                self._text[t] = v
        out = np.stack([self._text[t] for t in texts]) if texts else np.empty((0, self.model.cfg.embed_dim), np.float32)
        for t in texts:
            self._text.move_to_end(t)
        while len(self._text) > self._max:
            self._text.popitem(last=False)
        return out.astype(np.float32, copy=False)
