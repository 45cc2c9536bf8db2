"""scripts/figures.py in-process with --small: five real, non-blank PNGs and a report that holds every table
and links every figure."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import matplotlib.image
import numpy as np
import pytest

from research.experiments import FIGURE_FILES

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("figures_script", REPO_ROOT / "scripts" / "figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("figures")
    assert _load_script().main(["--out", str(folder), "--small"]) == 0
    return folder


@pytest.mark.parametrize("name", FIGURE_FILES.values())
def test_figure_is_a_real_png(out: Path, name: str) -> None:
    path = out / name
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 500
    rgb = np.round(pixels[..., :3] * 255).astype(np.uint32)
    assert float(rgb.var()) > 100.0  # not a single colour
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    assert np.unique(packed).size > 50  # drawn, not a flat block


def test_report_holds_every_table_and_links_every_figure(out: Path) -> None:
    report = (out / "report.md").read_text(encoding="utf-8")
    for name in FIGURE_FILES.values():
        assert f"]({name})" in report  # relative link next to the images
    for title in ("## Units", "## Routing scenario", "## Revenue versus price", "### Convergence",
                  "### Equilibrium prices and revenues", "### Client routes over the equilibrium prices",
                  "### Equilibrium versus compute cost"):
        assert title in report
    for header in ("| offer | layers | price (ref.) |", "| # | price (ref.) | latency ms |", "| α | price (ref.) |",
                   "| cost c | optimal price p* |", "| α | method | iterations | residual | FOC max error |",
                   "| quantity | min | median | mean | max | std |", "| node | layers | cost c | price p |",
                   "| client α | price (ref./token) |", "| cost c | equilibrium price p |"):
        assert header in report
    assert f"python scripts/figures.py --out {out} --small" in report
    assert "with seed 0." in report
    for alpha in ("| 0 |", "| 0.25 |", "| 0.5 |", "| 0.75 |", "| 1 |"):
        assert alpha in report


def test_bad_arguments_exit_with_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _load_script().main(["--out", str(tmp_path), "--seed", "x"])
    assert exit_info.value.code == 2
    assert "--seed" in capsys.readouterr().err
