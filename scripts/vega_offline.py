"""Rebuild .dvc/vega_offline.html: DVC's plots page with vega inlined, so `dvc plots show`
and `dvc plots diff` draw their curves without network.

    python scripts/vega_offline.py        # needs npm and network once; writes the template

DVC's own page loads vega, vega-lite and vega-embed from a CDN (dvc_render's
VegaRenderer.SCRIPTS), so without network every curve is blank. .dvc/config points
`plots.html_template` at this file. The versions are read from that same SCRIPTS string, so the
offline page runs exactly the code DVC's online page would; rerun this after upgrading DVC
(tests/test_plots_offline.py says when the versions drifted).
"""
from __future__ import annotations

import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

from dvc_render.vega import VegaRenderer

from vaelab import cli
from vaelab.config import UserError

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / ".dvc" / "vega_offline.html"
# the order matters: vega-lite and vega-embed find vega (and vega-lite) as globals
PACKAGES = ("vega", "vega-lite", "vega-embed")

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">  <!-- the bundles hold non-ASCII (the minus sign of axis labels) -->
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- {versions} (BSD-3-Clause), inlined from npm by scripts/vega_offline.py so that the
         page draws without network; DVC fills in the plots below -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def dvc_versions() -> dict[str, str]:
    """{package: version} of the scripts DVC's own page loads from the CDN."""
    found = dict(re.findall(r"/npm/(vega(?:-lite|-embed)?)@([0-9.]+)", VegaRenderer.SCRIPTS))
    missing = [p for p in PACKAGES if p not in found]
    if missing:
        raise UserError(f"dvc_render's VegaRenderer.SCRIPTS names no {missing[0]} version; "
                        "update scripts/vega_offline.py for this DVC")
    return {p: found[p] for p in PACKAGES}


def minified(package: str, version: str, folder: Path) -> str:
    try:
        out = subprocess.run(["npm", "pack", "-q", f"{package}@{version}"], cwd=folder,
                             capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("npm not found: install Node.js (e.g. `apt-get install -y npm`) and rerun")
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"npm pack {package}@{version} failed ({last}); check the network and rerun")
    with tarfile.open(folder / f"{package}-{version}.tgz") as tar:
        js = tar.extractfile(f"package/build/{package}.min.js").read().decode()
    if "</script" in js:  # would end the inline <script> element early
        raise UserError(f"{package}@{version}: its bundle contains '</script'; cannot inline")
    return js


def main():
    versions = dvc_versions()
    with tempfile.TemporaryDirectory() as tmp:
        scripts = "\n".join(f"    <script>{minified(p, v, Path(tmp))}</script>"
                            for p, v in versions.items())
    label = " ".join(f"{p}@{v}" for p, v in versions.items())
    TEMPLATE.write_text(PAGE.format(versions=label, scripts=scripts))
    print(f"{TEMPLATE.relative_to(ROOT)}: {label}, {TEMPLATE.stat().st_size:,} bytes")


if __name__ == "__main__":
    cli.run(main, "vega_offline")
