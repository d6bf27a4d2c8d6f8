"""Importers of real FLAME trackers' output into our dataset format (one module a tracker)."""

from __future__ import annotations

FORMATS = {
    "vhap": "emotalker.core.datasets.importers.vhap",  # VHAP / GaussianAvatars: transforms.json + flame_param/*.npz
}
